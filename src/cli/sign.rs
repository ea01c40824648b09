//! `key generate`, `sign`, and the passphrase of cosign's key files.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use vmt_registry::sign::keys::{PublicKey, SigningKey};
use vmt_registry::sign::policy::{Policy, Signer, Trust};
use vmt_registry::sign::sign;

/// Environment variable holding the passphrase of a key file (cosign's name).
const PASSWORD_ENV: &str = "COSIGN_PASSWORD";

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Write a new ECDSA P-256 key pair in cosign's format: NAME.key (encrypted with
    /// $COSIGN_PASSWORD, or a passphrase asked for) and NAME.pub.
    Generate {
        /// NAME: the files are NAME.key and NAME.pub.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// The bundle: NAME:TAG, digest or prefix.
    pub reference: String,
    /// The private key (cosign's NAME.key, or PKCS#8 / SEC1 PEM).
    #[arg(long)]
    pub key: PathBuf,
    /// The signed payload's docker-reference (default: the bundle's repository; give
    /// HOST/REPO when a containers policy will check it after a push).
    #[arg(long)]
    pub identity: Option<String>,
}

/// The passphrase of a key file: $COSIGN_PASSWORD, else asked on the terminal.
fn passphrase(prompt: &str, confirm: bool) -> anyhow::Result<String> {
    if let Ok(p) = std::env::var(PASSWORD_ENV) {
        return Ok(p);
    }
    let no_tty = |e: std::io::Error| {
        anyhow::anyhow!(
            "no passphrase: {PASSWORD_ENV} is not set and there is no terminal to ask on ({e})"
        )
    };
    let p = rpassword::prompt_password(prompt).map_err(no_tty)?;
    if confirm && rpassword::prompt_password("again: ").map_err(no_tty)? != p {
        bail!("the passphrases differ");
    }
    Ok(p)
}

pub fn run_key(cmd: KeyCommand) -> anyhow::Result<()> {
    let KeyCommand::Generate { out } = cmd;
    let (private, public) = (out.with_extension("key"), out.with_extension("pub"));
    for p in [&private, &public] {
        if p.exists() {
            bail!("{} exists: not overwritten", p.display());
        }
    }
    let key = SigningKey::generate();
    let pass = passphrase("passphrase for the new key: ", true)?;
    vmt_registry::file::write_private(&private, key.to_encrypted_pem(&pass).as_bytes())
        .with_context(|| format!("writing {}", private.display()))?;
    vmt_registry::file::write_atomic(&public, key.public().to_pem().as_bytes())
        .with_context(|| format!("writing {}", public.display()))?;
    println!(
        "wrote {} and {} (key {})",
        private.display(),
        public.display(),
        key.public().fingerprint()
    );
    Ok(())
}

/// A private key file, its passphrase from $COSIGN_PASSWORD or the terminal.
pub fn read_private(path: &Path) -> anyhow::Result<SigningKey> {
    Ok(SigningKey::read(path, || {
        passphrase(&format!("passphrase of {}: ", path.display()), false).map_err(|e| {
            vmt_registry::Error::Key {
                origin: path.display().to_string(),
                reason: e.to_string(),
            }
        })
    })?)
}

pub fn run_sign(root: Option<&Path>, a: SignArgs) -> anyhow::Result<()> {
    let key = read_private(&a.key)?;
    let reg = super::registry::open_existing(root)?;
    let s = sign(&reg, &a.reference, &key, a.identity.as_deref())?;
    println!(
        "signed {} ({}) with key {}: {} signature(s) in {}:{} ({})",
        a.reference,
        s.digest,
        key.public().fingerprint(),
        s.count,
        s.repository,
        s.tag,
        s.manifest
    );
    Ok(())
}

/// Public keys from files.
pub fn read_keys(paths: &[PathBuf]) -> anyhow::Result<Vec<PublicKey>> {
    Ok(paths
        .iter()
        .map(|p| PublicKey::read(p))
        .collect::<Result<_, _>>()?)
}

/// What a pull of `host/repo` by `reference` requires: the keys given (any one of
/// them), then the policy file's rule for it; nothing without either.
pub fn trust(
    keys: &[PathBuf],
    policy: Option<&Path>,
    (host, repo, reference): (&str, &str, &str),
) -> anyhow::Result<Trust> {
    let mut sets = Vec::new();
    if !keys.is_empty() {
        sets.push(Signer::keys(read_keys(keys)?));
    }
    if let Some(p) = policy {
        match Policy::read(p)?.trust_for(host, repo, reference)? {
            Trust::SignedBy(more) => sets.extend(more),
            reject @ Trust::Reject { .. } => return Ok(reject),
            Trust::Anything => {}
        }
    }
    Ok(if sets.is_empty() {
        Trust::Anything
    } else {
        Trust::SignedBy(sets)
    })
}
