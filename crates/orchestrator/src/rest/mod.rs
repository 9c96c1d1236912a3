pub mod error;
pub mod form;
