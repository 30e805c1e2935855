pub mod ad;
pub mod pipeline;
