//! `vmt-hub backbone fetch` and `vmt-hub backbone list`.

use clap::Subcommand;

use vmt_hub::model::backbone::read_config;
use vmt_hub::model::hub::{cached, fetch, list_cached, HubEnv, HubRef};
use vmt_hub::model::swin::parameter_count;

#[derive(Debug, Subcommand)]
pub enum BackboneCommand {
    /// Download a Swin from the Hugging Face Hub into the standard cache (shared with
    /// Python), resolving the revision to a commit.
    Fetch {
        /// owner/name[@revision], e.g. microsoft/swin-tiny-patch4-window7-224@main
        repo: String,
    },
    /// Cached Swin backbones with revision, size, digest and parameter count.
    List,
}

pub fn run(cmd: BackboneCommand) -> anyhow::Result<()> {
    let env = HubEnv::from_env();
    match cmd {
        BackboneCommand::Fetch { repo } => {
            let r = HubRef::parse(&repo).ok_or_else(|| {
                anyhow::anyhow!("{repo:?} is not a Hugging Face repo id (owner/name[@revision])")
            })?;
            let hub = fetch(&env, &r)?;
            if let Some(note) = &hub.note {
                eprintln!("note: {note}");
            }
            let geometry = read_config(&hub.snapshot.join("config.json"))?;
            println!("{}@{} -> commit {}", hub.repo, r.revision, hub.commit);
            println!("  snapshot {}", hub.snapshot.display());
            println!("  weights  {} ({})", hub.weights.display(), hub.digest);
            println!(
                "  Swin     {} ({} parameters)",
                geometry.describe(),
                parameter_count(&geometry)
            );
            Ok(())
        }
        BackboneCommand::List => {
            println!(
                "{:<48} {:<6} {:<12} {:>10} {:>12}  DIGEST",
                "REPO", "FORMAT", "COMMIT", "SIZE", "PARAMS"
            );
            for b in list_cached(&env) {
                let r = HubRef {
                    repo: b.repo.clone(),
                    revision: b.commit.clone(),
                };
                let Some(hub) = cached(&env, &r) else {
                    continue;
                };
                let size = std::fs::metadata(&hub.weights)
                    .map(|m| m.len())
                    .unwrap_or(0);
                let params = read_config(&b.snapshot.join("config.json"))
                    .map(|g| parameter_count(&g).to_string())
                    .unwrap_or_else(|_| "?".into());
                println!(
                    "{:<48} {:<6} {:<12} {:>10} {:>12}  {}",
                    b.repo,
                    b.format,
                    &b.commit[..b.commit.len().min(12)],
                    super::registry::human_bytes(size),
                    params,
                    hub.digest
                );
            }
            Ok(())
        }
    }
}
