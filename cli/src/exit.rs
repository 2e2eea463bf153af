//! The process exit codes of `gridloop`, the public contract scripts and CI rely on.
//!
//! Only the CLI chooses exit codes; libraries return typed errors.

/// Every scenario ran and every expectation held (also `--help`, `validate` with no problems).
pub const SUCCESS: u8 = 0;
/// At least one expectation failed, or a scenario's run panicked.
pub const EXPECTATION_FAILED: u8 = 1;
/// Invalid input or usage: a bad flag, a missing path, an invalid scenario file.
pub const INVALID_INPUT: u8 = 2;
/// The environment is unavailable: a report file cannot be written, threads cannot start, …
pub const ENVIRONMENT: u8 = 3;
/// No scenario ran: nothing found, or `--filter` matched nothing.
pub const NOTHING_RAN: u8 = 4;

/// An error that ends the command with a specific exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl Failure {
    pub fn new(code: u8, error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code,
            error: error.into(),
        }
    }

    pub fn msg(code: u8, message: impl std::fmt::Display) -> Self {
        Failure {
            code,
            error: anyhow::anyhow!("{message}"),
        }
    }
}

/// A command's result: the exit code to end with, or a failure to print and end with.
pub type CommandResult = Result<u8, Failure>;

/// Attach an exit code (and context) to any error.
pub trait OrExit<T> {
    fn or_exit(self, code: u8, context: impl FnOnce() -> String) -> Result<T, Failure>;
}

impl<T, E> OrExit<T> for Result<T, E>
where
    E: Into<anyhow::Error>,
{
    fn or_exit(self, code: u8, context: impl FnOnce() -> String) -> Result<T, Failure> {
        self.map_err(|e| Failure {
            code,
            error: e.into().context(context()),
        })
    }
}
