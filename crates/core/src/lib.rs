//! Warden's decision core: the action catalog, the asset inventory, guardrails, Cedar policy
//! and the decision ladder. Pure: no I/O, no async, no clock — time is an input.
//!
//! ```text
//! SourceFile* ──Bundle::load──► Bundle ──decide(input)──► Decision
//! ```

pub mod audit;
pub mod authority;
pub mod binding;
pub mod bundle;
pub mod catalog;
pub mod controls;
pub mod decision;
pub mod duration;
pub mod guardrail;
pub mod inventory;
pub mod mcp_map;
mod policy;
pub mod policy_test;
pub mod report;
pub mod request;
pub mod simulate;
pub mod source;

pub use bundle::{Bundle, BundleError};
pub use decision::{Band, Cap, CapCode, Decision, Outcome, PolicyRef, climb, decide};
pub use request::{ActionRequest, AgentStatus, BudgetUsage, DecisionInput, Halt, HaltScope, TaskInfo};
pub use source::{Problem, SourceFile};
