//! The AMQP `type` of every message on the bus: the protobuf full name of its payload.
//! Publishers set it and consumers refuse (dead-letter) anything else, so a payload of
//! another type or version is never decoded as this one. The one place these names are
//! spelt; the test below checks each against the compiled `.proto` files.

/// `gwb.events.v1.ChangeEvent`: collector → planner.
pub const EVENT_TYPE: &str = "gwb.events.v1.ChangeEvent";
/// `gwb.commands.v1.WriteCommand`: planner → writer.
pub const COMMAND_TYPE: &str = "gwb.commands.v1.WriteCommand";
/// `gwb.commands.v1.Outcome`: writer → planner, one per command.
pub const OUTCOME_TYPE: &str = "gwb.commands.v1.Outcome";
/// `gwb.commands.v1.WriterStatus`: writer → planner, periodically (on the outcomes route).
pub const WRITER_STATUS_TYPE: &str = "gwb.commands.v1.WriterStatus";
/// `gwb.commands.v1.DirectoryObservation`: writer → planner, what the directory watcher
/// saw (on the outcomes route).
pub const OBSERVATION_TYPE: &str = "gwb.commands.v1.DirectoryObservation";

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    #[test]
    fn every_message_type_names_a_message_of_the_proto_files() {
        let set = prost_types::FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET).unwrap();
        let names: Vec<String> = set
            .file
            .iter()
            .flat_map(|file| {
                let package = file.package().to_string();
                file.message_type.iter().map(move |message| format!("{package}.{}", message.name()))
            })
            .collect();
        for name in [EVENT_TYPE, COMMAND_TYPE, OUTCOME_TYPE, WRITER_STATUS_TYPE, OBSERVATION_TYPE] {
            assert!(names.iter().any(|n| n == name), "{name} is not a message of proto/");
        }
    }
}
