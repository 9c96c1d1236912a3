//! DCP messages.
