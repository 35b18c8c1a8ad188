//! Describing an error with its causes, for logs and operators.

/// An error and its causes, each by `Display` only, joined with ": " (a cause whose text the
/// previous message already ends with, as sqlx repeats its source, is skipped). `Debug` is never
/// used: a database error's `Debug` can carry row contents (PostgreSQL's "Failing row contains
/// (...)"), and neither logs nor operators' terminals may receive those.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("internal error")]
        Internal(#[source] Middle),
    }

    #[derive(Debug, thiserror::Error)]
    enum Middle {
        #[error("database error")]
        Database(#[source] std::io::Error),
    }

    #[test]
    fn the_chain_lists_each_cause_once_by_display() {
        let io = std::io::Error::other("password authentication failed");
        let error = Outer::Internal(Middle::Database(io));
        assert_eq!(error_chain(&error), "internal error: database error: password authentication failed");
    }
}
