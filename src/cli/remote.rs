//! `vmt-hub push`, `vmt-hub pull` and `vmt-hub serve`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use std::time::Duration;
use vmt_registry::reference::TagName;

use vmt_registry::remote::client::{Client, Credentials, Timeouts};
use vmt_registry::remote::logins::{self, AuthFiles};
use vmt_registry::remote::server::{serve_blocking, ServeOptions};
use vmt_registry::remote::transfer::{pull_trusted, push, Progress};
use vmt_registry::remote::RemoteRef;

#[derive(Debug, Args)]
pub struct AuthArgs {
    /// User name for basic auth; the password comes from VMT_REGISTRY_PASSWORD or a prompt.
    /// A bearer token can be given with VMT_REGISTRY_TOKEN instead.
    #[arg(long)]
    pub user: Option<String>,
    /// Use http even for a host that is not loopback.
    #[arg(long)]
    pub insecure: bool,
    /// Credentials file to read logins from (default: $REGISTRY_AUTH_FILE, else
    /// containers' auth.json, then docker's config.json, as skopeo and docker read them).
    #[arg(long)]
    pub authfile: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// Seconds the whole push or pull may take, retries included.
    #[arg(long, env = "VMT_REMOTE_TIMEOUT", default_value_t = 1800.0)]
    pub timeout: f64,
    /// Seconds any read or write may wait on the remote (also the time a response's
    /// headers may take, and the window of --min-rate).
    #[arg(long, env = "VMT_REMOTE_READ_TIMEOUT", default_value_t = 30.0)]
    pub read_timeout: f64,
    /// The slowest transfer accepted, in bytes per second over each --read-timeout
    /// window (curl's --speed-limit); 0 accepts any rate.
    #[arg(long, env = "VMT_REMOTE_MIN_RATE", default_value_t = 1024)]
    pub min_rate: u64,
}

/// A positive number of seconds from flag `--{flag}`.
fn secs(v: f64, flag: &str) -> anyhow::Result<Duration> {
    if v.is_finite() && v > 0.0 && v < 1e9 {
        Ok(Duration::from_secs_f64(v))
    } else {
        anyhow::bail!("--{flag} must be a positive number of seconds")
    }
}

impl AuthArgs {
    fn timeouts(&self) -> anyhow::Result<Timeouts> {
        Ok(Timeouts {
            connect: secs(self.read_timeout.min(10.0), "read-timeout")?,
            read: secs(self.read_timeout, "read-timeout")?,
            total: secs(self.timeout, "timeout")?,
            min_rate: self.min_rate,
        })
    }
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Local bundle: NAME:TAG, digest or prefix.
    pub reference: String,
    /// oci://HOST[:PORT]/REPO:TAG
    pub remote: String,
    #[command(flatten)]
    pub auth: AuthArgs,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// oci://HOST[:PORT]/REPO[:TAG|@sha256:...]
    pub remote: String,
    /// Local tag (default: REPO:TAG of the remote).
    #[arg(long)]
    pub tag: Option<String>,
    /// Require a signature by this public key (cosign's NAME.pub; repeatable: any one
    /// of them); checked before anything is stored.
    #[arg(long = "verify-key")]
    pub verify_key: Vec<PathBuf>,
    /// A trust policy (containers-policy.json format, as skopeo reads) saying which
    /// keys each registry or repository requires.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    #[command(flatten)]
    pub auth: AuthArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on, HOST:PORT (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:5000")]
    pub addr: SocketAddr,
    /// Require `Authorization: Bearer <TOKEN>` on every request.
    #[arg(long, env = "VMT_SERVE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Largest request body in bytes (larger uploads use several PATCH requests).
    #[arg(long, default_value_t = vmt_registry::remote::server::MAX_BODY)]
    pub max_body: usize,
    /// Largest blob in bytes (the sum of an upload's chunks).
    #[arg(long, default_value_t = vmt_registry::remote::server::MAX_BLOB)]
    pub max_blob: u64,
    /// Upload sessions open at once.
    #[arg(long, default_value_t = 64)]
    pub max_uploads: usize,
    /// Seconds after which an upload session with no request is deleted.
    #[arg(long, default_value_t = 3600.0)]
    pub upload_ttl: f64,
    /// Seconds a client has to send request headers (also how long an idle
    /// keep-alive connection stays open).
    #[arg(long, default_value_t = 10.0)]
    pub header_timeout: f64,
    /// Longest pause in seconds inside a request body.
    #[arg(long, default_value_t = 60.0)]
    pub idle_timeout: f64,
    /// Connections served at once (more wait in the listen queue).
    #[arg(long, default_value_t = 256)]
    pub max_connections: usize,
}

/// The credentials for `remote`: VMT_REGISTRY_TOKEN, else --user with its password, else
/// the login a credentials file (or its helper) has for the host, else none.
fn credentials(a: &AuthArgs, remote: &RemoteRef) -> anyhow::Result<Credentials> {
    let token = std::env::var("VMT_REGISTRY_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    if let Some(user) = &a.user {
        return Ok(Credentials {
            user: Some(user.clone()),
            password: Some(password(user)?),
            token,
            source: None,
        });
    }
    if token.is_some() {
        return Ok(Credentials {
            token,
            ..Credentials::default()
        });
    }
    let files = auth_files(a.authfile.as_deref());
    Ok(files
        .lookup(&remote.host, &remote.repo)?
        .unwrap_or_default())
}

fn auth_files(given: Option<&Path>) -> AuthFiles {
    given.map_or_else(AuthFiles::from_env, AuthFiles::only)
}

/// The password of `user`: VMT_REGISTRY_PASSWORD, else asked on the terminal.
fn password(user: &str) -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("VMT_REGISTRY_PASSWORD") {
        return Ok(p);
    }
    rpassword::prompt_password(format!("password for {user}: ")).map_err(|e| {
        anyhow::anyhow!(
            "--user {user}: no password: VMT_REGISTRY_PASSWORD is not set and there is no \
             terminal to ask on ({e})"
        )
    })
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The registry: HOST[:PORT].
    pub host: String,
    /// User name.
    #[arg(long, short)]
    pub username: String,
    /// Read the password from standard input (else VMT_REGISTRY_PASSWORD, else a prompt).
    #[arg(long)]
    pub password_stdin: bool,
    /// Credentials file to write (default: $REGISTRY_AUTH_FILE, else containers'
    /// auth.json, where skopeo and podman read it).
    #[arg(long)]
    pub authfile: Option<PathBuf>,
    /// Use http even for a host that is not loopback.
    #[arg(long)]
    pub insecure: bool,
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// The registry: HOST[:PORT].
    pub host: String,
    /// Credentials file to change (default: as `login`).
    #[arg(long)]
    pub authfile: Option<PathBuf>,
}

/// `login`: checks the credentials against the registry, then stores them.
pub fn run_login(a: LoginArgs) -> anyhow::Result<()> {
    let password = if a.password_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line.trim_end_matches(['\n', '\r']).to_string()
    } else {
        password(&a.username)?
    };
    if a.host.is_empty() || a.host.contains(['/', '@']) {
        anyhow::bail!("{:?} is not a registry host (HOST[:PORT])", a.host);
    }
    let base = vmt_registry::remote::base_url(&a.host, a.insecure);
    let creds = Credentials {
        user: Some(a.username.clone()),
        password: Some(password.clone()),
        ..Credentials::default()
    };
    let files = auth_files(a.authfile.as_deref());
    let client = Client::new(&base, creds);
    let file = logins::login(&files, &client, &a.host, &a.username, &password)?;
    println!(
        "logged in to {} as {} (saved in {})",
        a.host,
        a.username,
        file.display()
    );
    Ok(())
}

/// `logout`: forgets the stored login of a host.
pub fn run_logout(a: LogoutArgs) -> anyhow::Result<()> {
    let files = auth_files(a.authfile.as_deref());
    if !files.erase(&a.host)? {
        anyhow::bail!("not logged in to {} (in {})", a.host, files.write.display());
    }
    println!(
        "logged out of {} (removed from {})",
        a.host,
        files.write.display()
    );
    Ok(())
}

/// An indicatif bar, hidden with --quiet or when stdout is not a terminal.
struct Bar(indicatif::ProgressBar);

impl Bar {
    fn new(quiet: bool) -> Self {
        if quiet || !std::io::stdout().is_terminal() {
            return Self(indicatif::ProgressBar::hidden());
        }
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        Self(bar)
    }
}

impl Progress for Bar {
    fn start(&mut self, what: &str, total: u64) {
        self.0.set_length(total);
        self.0.set_message(what.to_string());
    }
    fn advance(&mut self, bytes: u64) {
        self.0.inc(bytes);
    }
    fn finish(&mut self) {
        self.0.finish_and_clear();
    }
}

pub fn run_push(root: Option<&Path>, a: PushArgs) -> anyhow::Result<()> {
    let remote = RemoteRef::parse(&a.remote, a.auth.insecure)?;
    let mut client = Client::with_timeouts(
        &remote.base,
        credentials(&a.auth, &remote)?,
        a.auth.timeouts()?,
    );
    if let Some(n) = std::env::var("VMT_PUSH_CHUNK_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
    {
        client.chunk_size = n;
    }
    let reg = super::registry::open_existing(root)?;
    let r = push(
        &reg,
        &a.reference,
        &remote,
        &client,
        &mut Bar::new(a.auth.quiet),
    )?;
    println!(
        "pushed {} -> {remote} ({}): {} blob(s) sent ({}), {} already there, {} mounted from another repository",
        a.reference,
        r.manifest.map(|d| d.to_string()).unwrap_or_default(),
        r.blobs_sent,
        super::registry::human_bytes(r.bytes_sent),
        r.blobs_skipped,
        r.blobs_mounted
    );
    if r.signatures > 0 {
        println!("{} signature(s) on the remote", r.signatures);
    }
    Ok(())
}

pub fn run_pull(root: Option<&Path>, a: PullArgs) -> anyhow::Result<()> {
    let remote = RemoteRef::parse(&a.remote, a.auth.insecure)?;
    let tag = a.tag.as_deref().map(TagName::parse).transpose()?;
    let client = Client::with_timeouts(
        &remote.base,
        credentials(&a.auth, &remote)?,
        a.auth.timeouts()?,
    );
    let reference = remote.reference.to_string();
    let trust = super::sign::trust(
        &a.verify_key,
        a.policy.as_deref(),
        (&remote.host, &remote.repo, &reference),
    )?;
    let reg = super::registry::open(root)?;
    let r = pull_trusted(
        &reg,
        &remote,
        &client,
        tag.as_ref(),
        &trust,
        &mut Bar::new(a.auth.quiet),
    )?;
    println!(
        "pulled {remote} ({}): {} blob(s) received ({}), {} signature(s)",
        r.manifest.map(|d| d.to_string()).unwrap_or_default(),
        r.blobs_received,
        super::registry::human_bytes(r.bytes_received),
        r.signatures
    );
    for k in &r.verified_by {
        println!("verified: signed by key {k}");
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// oci://HOST[:PORT]/REPO
    pub remote: String,
    /// Tags asked for per request (the `n` of the distribution spec).
    #[arg(long, default_value_t = 100)]
    pub page_size: usize,
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// A client for `remote` with the logins and timeouts of `auth`.
fn client_for(remote: &RemoteRef, auth: &AuthArgs) -> anyhow::Result<Client> {
    Ok(Client::with_timeouts(
        &remote.base,
        credentials(auth, remote)?,
        auth.timeouts()?,
    ))
}

pub fn run_ls(a: LsArgs) -> anyhow::Result<()> {
    // A repository alone parses as REPO:latest; only the repository is used.
    let remote = RemoteRef::parse(&a.remote, a.auth.insecure)?;
    let client = client_for(&remote, &a.auth)?;
    for tag in vmt_registry::remote::inspect::list_tags(&client, &remote, a.page_size)? {
        println!("{tag}");
    }
    Ok(())
}

pub fn run_show_remote(reference: &str, auth: &AuthArgs) -> anyhow::Result<()> {
    let remote = RemoteRef::parse(reference, auth.insecure)?;
    let client = client_for(&remote, auth)?;
    let b = vmt_registry::remote::inspect::inspect(&client, &remote)?;
    println!("digest: {}", b.digest);
    println!("remote: {remote}");
    super::registry::print_summary(&b.manifest, &b.config);
    if let Some(parent) = vmt_registry::store::parent_of(&b.config) {
        println!("parent: {parent}");
    }
    println!("signatures: {}", b.signatures);
    println!(
        "config:\n{}",
        serde_json::to_string_pretty(&vmt_registry::store::config_value(&b.config))?
    );
    Ok(())
}

pub fn run_serve(root: Option<&Path>, a: ServeArgs) -> anyhow::Result<()> {
    let reg = super::registry::open(root)?;
    let dir = reg.root().display().to_string();
    let auth = if a.token.is_some() {
        " (bearer token required)"
    } else {
        ""
    };
    let opts = ServeOptions {
        token: a.token,
        max_body: a.max_body,
        max_blob: a.max_blob,
        max_uploads: a.max_uploads,
        upload_ttl: secs(a.upload_ttl, "upload-ttl")?,
        header_timeout: secs(a.header_timeout, "header-timeout")?,
        idle_timeout: secs(a.idle_timeout, "idle-timeout")?,
        max_connections: a.max_connections,
        ..ServeOptions::new(a.addr)
    };
    serve_blocking(reg, opts, |addr| {
        println!("serving {dir} on http://{addr}{auth}");
    })?;
    Ok(())
}
