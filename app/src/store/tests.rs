use super::*;

#[test]
fn spec_round_trips_and_redacts() {
    let s: StoreSpec =
        "replicas:postgres://u:secret@127.0.0.1:1/db,postgres://u:secret@127.0.0.1:2/db"
            .parse()
            .expect("parses");
    assert!(matches!(&s, StoreSpec::Replicas { replicas, .. } if replicas.len() == 1));
    assert!(s.to_string().contains("secret"));
    assert!(!s.redacted().contains("secret"), "{}", s.redacted());
    assert!(!format!("{s:?}").contains("secret"));
    let bare = s.without_passwords().to_string();
    assert!(!bare.contains("secret") && !bare.contains("***"), "{bare}");
    assert!(bare.contains("postgres://u@127.0.0.1:2/db"), "{bare}");
    assert!("nope".parse::<StoreSpec>().is_err());
    assert!("mysql:x".parse::<StoreSpec>().is_err());
}

/// Opening stores.
mod open {
    use super::*;

    /// A conflict is recognised wherever it sits in the chain (raw, or inside a
    /// `StoreError`, with context around it); other errors are not retried.
    #[test]
    fn conflicts_are_recognised_through_the_error_chain() {
        #[derive(Debug)]
        struct Deadlock;
        impl std::fmt::Display for Deadlock {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("deadlock detected")
            }
        }
        impl std::error::Error for Deadlock {}
        impl sqlx::error::DatabaseError for Deadlock {
            fn message(&self) -> &str {
                "deadlock detected"
            }
            fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
                Some("40P01".into())
            }
            fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
                self
            }
            fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
                self
            }
            fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
                self
            }
            fn kind(&self) -> sqlx::error::ErrorKind {
                sqlx::error::ErrorKind::Other
            }
        }
        let raw = anyhow::Error::from(sqlx::Error::Database(Box::new(Deadlock)));
        assert!(is_conflict(&raw.context("creating the fence")));
        let wrapped = anyhow::Error::from(StoreError::Other(anyhow::Error::from(
            sqlx::Error::Database(Box::new(Deadlock)),
        )));
        assert!(is_conflict(&wrapped.context("opening the source")));
        assert!(!is_conflict(&anyhow::Error::from(
            sqlx::Error::PoolTimedOut
        )));
        assert!(!is_conflict(&anyhow::anyhow!("deadlock detected")));
    }
}
