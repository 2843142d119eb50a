//! What the generated wire types need beyond prost: the [`Envelope`] trait the codec is generic
//! over (a name for errors, a check of what protobuf cannot check, a kind for logs), and `From`
//! conversions so `ClientMessage::from(Query { .. })` builds an envelope.

use crate::wire::{
    client_message, server_message, value, AuthOk, BackupChunk, BackupStart, BaseBackupRequest,
    ClientMessage, CommandComplete, DataRows, Error as ErrorMessage, Keepalive, Query, ReadyForQuery,
    RowDescription, ServerMessage, StandbyStatus, StartReplication, Startup, Terminate, TimelineSwitch,
    WalData,
};
use crate::Error;

mod sealed {
    /// Only this crate's two envelopes are envelopes.
    pub trait Sealed {}
    impl Sealed for crate::wire::ClientMessage {}
    impl Sealed for crate::wire::ServerMessage {}
}

/// A top-level message that travels in one frame: [`ClientMessage`] or [`ServerMessage`].
///
/// Invariants (checked by [`Envelope::validate`] on every encode and every decode):
/// - the `msg` oneof is set;
/// - every row value in a `DataRows` has its `kind` set.
pub trait Envelope: prost::Message + Default + sealed::Sealed {
    /// The protobuf name of the envelope, for error messages.
    const NAME: &'static str;

    /// Checks the invariants protobuf itself cannot express.
    fn validate(&self) -> Result<(), Error>;

    /// The snake_case name of the carried message (its oneof field name, e.g. `"query"`), or
    /// `"none"` when the envelope is empty. For logs and "unexpected message" errors.
    fn kind(&self) -> &'static str;
}

impl Envelope for ClientMessage {
    const NAME: &'static str = "ClientMessage";

    fn validate(&self) -> Result<(), Error> {
        match self.msg {
            Some(_) => Ok(()),
            None => Err(Error::EmptyEnvelope { envelope: Self::NAME }),
        }
    }

    fn kind(&self) -> &'static str {
        use client_message::Msg;
        match &self.msg {
            None => "none",
            Some(Msg::Startup(_)) => "startup",
            Some(Msg::Query(_)) => "query",
            Some(Msg::Terminate(_)) => "terminate",
            Some(Msg::StartReplication(_)) => "start_replication",
            Some(Msg::BaseBackupRequest(_)) => "base_backup_request",
            Some(Msg::StandbyStatus(_)) => "standby_status",
        }
    }
}

impl Envelope for ServerMessage {
    const NAME: &'static str = "ServerMessage";

    fn validate(&self) -> Result<(), Error> {
        match &self.msg {
            None => Err(Error::EmptyEnvelope { envelope: Self::NAME }),
            Some(server_message::Msg::DataRows(batch)) => validate_rows(batch),
            Some(_) => Ok(()),
        }
    }

    fn kind(&self) -> &'static str {
        use server_message::Msg;
        match &self.msg {
            None => "none",
            Some(Msg::AuthOk(_)) => "auth_ok",
            Some(Msg::Error(_)) => "error",
            Some(Msg::RowDescription(_)) => "row_description",
            Some(Msg::DataRows(_)) => "data_rows",
            Some(Msg::CommandComplete(_)) => "command_complete",
            Some(Msg::ReadyForQuery(_)) => "ready_for_query",
            Some(Msg::WalData(_)) => "wal_data",
            Some(Msg::TimelineSwitch(_)) => "timeline_switch",
            Some(Msg::Keepalive(_)) => "keepalive",
            Some(Msg::BackupChunk(_)) => "backup_chunk",
            Some(Msg::BackupStart(_)) => "backup_start",
        }
    }
}

/// Every value of every row must say what it is; an unset value would otherwise read as
/// neither NULL nor a value.
fn validate_rows(batch: &DataRows) -> Result<(), Error> {
    for (row_index, row) in batch.rows.iter().enumerate() {
        if let Some(column_index) = row.values.iter().position(|value| value.kind.is_none()) {
            return Err(Error::Malformed(format!(
                "DataRows row {row_index} value {column_index} has no kind \
                 (unset, or a type this version does not know)"
            )));
        }
    }
    Ok(())
}

/// `impl From<$message> for $envelope`, wrapping the message in the envelope's oneof.
macro_rules! envelope_from {
    ($envelope:ident, $oneof:ident: $($message:ident => $variant:ident),+ $(,)?) => {
        $(
            impl From<$message> for $envelope {
                fn from(message: $message) -> Self {
                    $envelope { msg: Some($oneof::Msg::$variant(message)) }
                }
            }
        )+
    };
}

envelope_from!(ClientMessage, client_message:
    Startup => Startup,
    Query => Query,
    Terminate => Terminate,
    StartReplication => StartReplication,
    BaseBackupRequest => BaseBackupRequest,
    StandbyStatus => StandbyStatus,
);

envelope_from!(ServerMessage, server_message:
    AuthOk => AuthOk,
    ErrorMessage => Error,
    RowDescription => RowDescription,
    DataRows => DataRows,
    CommandComplete => CommandComplete,
    ReadyForQuery => ReadyForQuery,
    WalData => WalData,
    TimelineSwitch => TimelineSwitch,
    Keepalive => Keepalive,
    BackupChunk => BackupChunk,
    BackupStart => BackupStart,
);

impl value::Kind {
    /// The SQL NULL.
    pub const NULL: value::Kind = value::Kind::Null(crate::wire::Null {});
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Row, Value};

    #[test]
    fn from_wraps_in_the_envelope() {
        let msg = ClientMessage::from(Query { sql: "SELECT 1".into() });
        assert_eq!(msg.kind(), "query");
        assert!(msg.validate().is_ok());
        let msg = ServerMessage::from(ReadyForQuery { in_transaction: true, failed_transaction: false });
        assert_eq!(msg.kind(), "ready_for_query");
    }

    #[test]
    fn empty_envelopes_are_refused() {
        assert!(matches!(
            ClientMessage::default().validate(),
            Err(Error::EmptyEnvelope { envelope: "ClientMessage" })
        ));
        assert!(matches!(
            ServerMessage::default().validate(),
            Err(Error::EmptyEnvelope { envelope: "ServerMessage" })
        ));
        assert_eq!(ServerMessage::default().kind(), "none");
    }

    #[test]
    fn unset_row_values_are_refused() {
        let good = Value { kind: Some(value::Kind::NULL) };
        let rows = DataRows {
            rows: vec![Row { values: vec![good.clone()] }, Row { values: vec![good, Value { kind: None }] }],
        };
        let err = ServerMessage::from(rows).validate().unwrap_err();
        assert!(matches!(&err, Error::Malformed(detail) if detail.contains("row 1 value 1")), "{err}");
    }
}
