//! A macro for wire code tables that keep unknown values as raw numbers.
//!
//! A proxy must forward frames it does not understand, so neither `Opcode` nor
//! `Status` may reject a value: anything not in the table becomes `Unknown(raw)`.

macro_rules! code_table {
    (
        $(#[$doc:meta])*
        $name:ident($repr:ty) {
            $( $(#[$vdoc:meta])* $variant:ident = $value:literal => $wire:literal, )*
        }
    ) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vdoc])* #[doc = concat!("`", $wire, "` (", stringify!($value), ")")] $variant, )*
            /// A value not in the table, kept as received.
            Unknown($repr),
        }

        impl $name {
            /// Every named value, in table order.
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )* ];

            /// The wire value.
            #[must_use]
            pub const fn to_raw(self) -> $repr {
                match self {
                    $( $name::$variant => $value, )*
                    $name::Unknown(v) => v,
                }
            }

            /// Maps a wire value; values outside the table become `Unknown`.
            #[must_use]
            pub const fn from_raw(v: $repr) -> Self {
                match v {
                    $( $value => $name::$variant, )*
                    other => $name::Unknown(other),
                }
            }

            /// The spec's name (e.g. `DCP_STREAM_REQ`), or `UNKNOWN` for unknown values.
            #[must_use]
            pub const fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => $wire, )*
                    $name::Unknown(_) => "UNKNOWN",
                }
            }

            /// Whether the value is in the table.
            #[must_use]
            pub const fn is_known(self) -> bool {
                !matches!(self, $name::Unknown(_))
            }
        }

        impl From<$repr> for $name {
            fn from(v: $repr) -> Self {
                Self::from_raw(v)
            }
        }

        impl From<$name> for $repr {
            fn from(v: $name) -> Self {
                v.to_raw()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self {
                    $name::Unknown(v) => write!(f, "UNKNOWN({:#x})", v),
                    known => write!(f, "{}({:#x})", known.name(), known.to_raw()),
                }
            }
        }
    };
}

pub(crate) use code_table;
