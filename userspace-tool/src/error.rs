//! The CLI's error type: a message and the exit status it stands for.
//!
//! Exit status: 0 success, 1 operational error (device-mapper, the kernel, a device or file),
//! 2 usage error (bad arguments or configuration; clap's own parse errors exit 2 as well).

use std::fmt;

/// A failure of a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The request itself is wrong (exit status 2).
    Usage(String),
    /// The request is fine but could not be carried out (exit status 1).
    Op(String),
}

impl Error {
    /// An operational error.
    pub fn op(msg: impl Into<String>) -> Self {
        Self::Op(msg.into())
    }

    /// A usage error.
    pub fn usage(msg: impl Into<String>) -> Self {
        Self::Usage(msg.into())
    }

    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Op(_) => 1,
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        match self {
            Self::Usage(m) | Self::Op(m) => m,
        }
    }

    /// The same kind of error with `context: ` in front of the message.
    pub fn context(self, context: impl fmt::Display) -> Self {
        match self {
            Self::Usage(m) => Self::Usage(format!("{context}: {m}")),
            Self::Op(m) => Self::Op(format!("{context}: {m}")),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Error {}

/// Result of a command step.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_context() {
        assert_eq!(Error::usage("x").exit_code(), 2);
        assert_eq!(Error::op("x").exit_code(), 1);
        let e = Error::op("busy").context("pool0");
        assert_eq!(e, Error::Op("pool0: busy".into()));
        assert_eq!(e.to_string(), "pool0: busy");
        assert_eq!(Error::usage("bad").context("a").exit_code(), 2);
    }
}
