pub mod demo;
pub mod policy;
