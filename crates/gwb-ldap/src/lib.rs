//! The product's only LDAP client: applies writeback commands to Active Directory.
//!
//! A [`Directory`] holds one LDAPS (or StartTLS) connection, verified against the
//! configured CA only, and re-establishes it when it breaks. It finds groups only by
//! their anchor (`adminDescription = Group_<objectId>`) inside the managed OUs and
//! refuses to touch anything else: objects outside those OUs, without the anchor,
//! protected (`adminCount=1`, critical system objects) or with well-known SIDs.
//!
//! AD quirks handled here: binary objectGUID/objectSid, `<SID=…>`/`<GUID=…>` member
//! values, permissive modify where offered (with a fallback for servers that ignore
//! it, such as Samba 4.17), ranged retrieval of large `member` attributes with the
//! extended-DN control, and schema detection (msDS-ExternalDirectoryObjectId, and
//! Exchange as Exchange detects it: [`exchange`]).

mod codec;
mod config;
mod directory;
mod error;
pub mod exchange;
mod group;
mod members;
mod observe;
mod tls;
mod upsert;
mod watch;

pub use config::{DEFAULT_MEMBER_BATCH_SIZE, DEFAULT_OPERATION_TIMEOUT, DirectoryConfig};
pub use directory::{AdMember, Capabilities, Directory};
pub use error::DirectoryError;
pub use exchange::{ExchangeDetection, ExchangePresence, M365WritebackRefusal};
pub use observe::{OperationKind, OperationObserver, OperationOutcome, OperationRecord};
pub use watch::WatchPosition;

#[cfg(test)]
mod tests {
    use super::*;
    use gwb_core::command::WriteCommand;

    #[test]
    fn directory_and_its_futures_are_send() {
        // The writer drives a Directory from spawned tasks; this only has to compile.
        fn assert_send<T: Send>(_: &T) {}
        let _check = |dir: &mut Directory, command: &WriteCommand| {
            assert_send(dir);
            assert_send(&dir.apply(command));
        };
        let _reads = |dir: &mut Directory| assert_send(&dir.read_members("a"));
        let _health = |dir: &mut Directory| assert_send(&dir.check_health());
    }
}
