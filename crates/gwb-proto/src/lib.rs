//! Wire types of group writeback, generated from `proto/`, and the control protocol's
//! token check. Field documentation lives in the `.proto` files.

pub mod auth;
pub mod convert;
pub mod message_types;
pub mod server;

pub mod events {
    pub mod v1 {
        tonic::include_proto!("gwb.events.v1");
    }
}

pub mod commands {
    pub mod v1 {
        tonic::include_proto!("gwb.commands.v1");
    }
}

pub mod control {
    pub mod v1 {
        tonic::include_proto!("gwb.control.v1");
    }
}

/// Encoded `FileDescriptorSet` of every proto file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/gwb_descriptor.bin"));
