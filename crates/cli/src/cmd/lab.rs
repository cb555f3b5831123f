//! `warden lab serve`: the fake SOC estate the example connectors point at; `warden lab
//! mcp-stdio`: its EDR's MCP server on stdin/stdout (an upstream launched as a command).

use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::Failure;

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Serve the lab estate (EDR, identity provider, firewall, mail, ticketing, SIEM) until
    /// SIGTERM/SIGINT. Prints the address and the API keys to export for `warden serve`.
    Serve(LabArgs),
    /// The lab EDR's MCP server on stdin/stdout, over an estate of its own: an upstream MCP
    /// server Warden launches as a command (`[[mcp.upstreams]] command = [...]`).
    McpStdio,
}

#[derive(Debug, Args)]
pub struct LabArgs {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8700")]
    pub listen: String,
    /// Make every tool call take this long (milliseconds): a slow vendor API.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
}

pub fn run(c: LabCommand) -> Result<(), Failure> {
    let a = match c {
        LabCommand::Serve(a) => a,
        LabCommand::McpStdio => {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
            runtime.block_on(warden_lab::serve_mcp_stdio()).context("serving MCP on stdio")?;
            return Ok(());
        }
    };
    // Keys already in the environment are kept, so a shell that exported them stays valid.
    let mut keys = warden_lab::Keys::random();
    for (name, slot) in [
        ("LAB_EDR_KEY", &mut keys.edr),
        ("LAB_IDP_KEY", &mut keys.idp),
        ("LAB_FIREWALL_KEY", &mut keys.firewall),
        ("LAB_MAIL_KEY", &mut keys.mail),
        ("LAB_TICKETING_KEY", &mut keys.ticketing),
        ("LAB_SIEM_KEY", &mut keys.siem),
    ] {
        if let Ok(v) = std::env::var(name)
            && !v.is_empty()
        {
            *slot = v;
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(&a.listen).await.with_context(|| format!("listening on `{}`", a.listen))?;
        let addr = listener.local_addr().context("reading the listening address")?;
        outln!("lab estate listening on {addr}");
        for (name, key) in keys.env() {
            outln!("export {name}={key}");
        }
        let delay = std::time::Duration::from_millis(a.delay_ms);
        warden_lab::serve_with(listener, keys, delay, warden_server::serve::signals())
            .await
            .context("serving the lab")?;
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}
