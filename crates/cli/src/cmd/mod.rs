pub mod agent;
pub mod approvals;
pub mod audit;
pub mod demo;
pub mod explain;

pub mod init;
pub mod lab;
pub mod mcp;
pub mod policy;
pub mod report;
pub mod respond;
pub mod serve;
pub mod store;
pub mod task;
