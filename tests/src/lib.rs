pub mod ad;
pub mod fixture;
pub mod pipeline;
pub mod workload;
