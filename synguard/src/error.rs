//! Exit codes and the error that means "bad usage or bad input".
//!
//! `0` success, `1` a runtime failure, `2` bad usage or bad input (spec). Library code
//! returns [`UsageError`] for anything the user can fix by changing what they typed or
//! wrote; `main` maps it to exit code 2 wherever it sits in an `anyhow` chain.

/// Bad usage or bad input; the message says what was wrong and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Shorthand for an `anyhow::Error` carrying a [`UsageError`].
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

/// The exit code for an error: 2 if a [`UsageError`] is anywhere in its chain.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    if e.chain().any(|c| c.is::<UsageError>()) {
        EXIT_USAGE
    } else {
        EXIT_FAILURE
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;

    use super::*;

    #[test]
    fn usage_errors_exit_2_through_context() {
        let e = Err::<(), _>(usage("not a CIDR: x"))
            .context("block add")
            .unwrap_err();
        assert_eq!(exit_code(&e), EXIT_USAGE);
        assert_eq!(exit_code(&anyhow::anyhow!("boom")), EXIT_FAILURE);
    }
}
