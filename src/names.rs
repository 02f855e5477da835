//! Names of fieldless enums as PyTorch and bitsandbytes spell them: `FromStr` (an
//! unknown name is a typed error naming the argument and the value) and `Display`.

/// Implements `name()`, `FromStr` and `Display` for `$ty` from its variants' spellings;
/// `$arg` is the argument a wrong spelling is reported against.
macro_rules! spelled_enum {
    ($ty:ty, $arg:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// The name PyTorch / bitsandbytes give it (what `FromStr` takes and
            /// `Display` writes).
            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $name),+
                }
            }
        }

        impl std::str::FromStr for $ty {
            type Err = crate::error::Error;

            /// # Errors
            /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) naming the
            /// argument and the spelling, for a name it does not have.
            fn from_str(s: &str) -> crate::error::Result<Self> {
                match s {
                    $($name => Ok(Self::$variant),)+
                    _ => Err(crate::error::Error::arg(
                        $arg,
                        format!("expected one of {}, got {s:?}", [$(concat!("'", $name, "'")),+].join(", ")),
                    )),
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

pub(crate) use spelled_enum;
