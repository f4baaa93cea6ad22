//! The fuzz targets, each `run(&[u8]) -> Result<(), String>`.

pub mod build;
pub mod control;
pub mod fake;
pub mod nat;
pub mod pipeline;
pub mod topology;
pub mod wire;
