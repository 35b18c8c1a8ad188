//! The instance metadata: who this Portcullis installation is and which schema its data has.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Timestamp;

/// The identifier of one Portcullis installation, generated once on first start.
///
/// It ties backups, audit checkpoints and logs to the installation that made them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InstanceId(Uuid);

impl InstanceId {
    /// A new identifier from 16 random bytes supplied by the caller (randomness is an input).
    pub fn from_random_bytes(bytes: [u8; 16]) -> Self {
        Self(uuid::Builder::from_random_bytes(bytes).into_uuid())
    }

    /// Parses the hyphenated text form stored in the database.
    pub fn parse(text: &str) -> Result<Self, InvalidInstanceId> {
        Uuid::try_parse(text).map(Self).map_err(|_| InvalidInstanceId)
    }
}

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Text that is not an instance id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a valid instance id")]
pub struct InvalidInstanceId;

/// The one row that describes the installation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceMeta {
    /// Generated on first start; never changes.
    pub id: InstanceId,
    /// When the installation was first started.
    pub created_at: Timestamp,
    /// The version of Portcullis that created it.
    pub created_by_version: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_id_round_trips_through_its_text_form() {
        let id = InstanceId::from_random_bytes([7; 16]);
        assert_eq!(InstanceId::parse(&id.to_string()), Ok(id));
    }

    #[test]
    fn garbage_is_not_an_instance_id() {
        assert_eq!(InstanceId::parse("not-a-uuid"), Err(InvalidInstanceId));
    }
}
