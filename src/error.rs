//! Raising errors. Every error the library raises goes through here: a SQLSTATE, a message
//! that names the argument or the object at fault, and, where they help, a DETAIL (what was
//! found) and a HINT (what to do), in their own fields rather than in the message.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// An error about to be raised; `raise` ends the statement.
pub struct Error {
    code: PgSqlErrorCode,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
}

impl Error {
    pub fn new(code: PgSqlErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    #[track_caller]
    pub fn raise(self) -> ! {
        let mut report = ErrorReport::new(self.code, self.message, "webinar_sessions");
        if let Some(detail) = self.detail {
            report = report.set_detail(detail);
        }
        if let Some(hint) = self.hint {
            report = report.set_hint(hint);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("an ERROR does not return")
    }
}

/// An error with a message only.
#[track_caller]
pub fn raise(code: PgSqlErrorCode, message: impl Into<String>) -> ! {
    Error::new(code, message).raise()
}
