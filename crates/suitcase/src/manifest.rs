//! `suitcase keygen` and `suitcase manifest {create,sign,verify,inspect}`: offline tools.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use serde_json::json;
use suitcase_suit::manifest::{ParamValue, Severable};
use suitcase_suit::{builder, Algorithm, Envelope, Image, ManifestBuilder, Profile, SigningKey, VerifyingKey};

/// A signature algorithm on the command line.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum AlgArg {
    /// Ed25519 (what RIOT verifies).
    #[value(alias = "eddsa")]
    Ed25519,
    /// ECDSA P-256 with SHA-256.
    #[value(alias = "esp256", alias = "p256")]
    Es256,
}

impl From<AlgArg> for Algorithm {
    fn from(a: AlgArg) -> Self {
        match a {
            AlgArg::Ed25519 => Algorithm::Ed25519,
            AlgArg::Es256 => Algorithm::Es256,
        }
    }
}

/// A manifest profile on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProfileArg {
    /// draft-ietf-suit-manifest-37 (tag 107).
    Draft37,
    /// RIOT's draft-09 profile.
    Riot09,
}

impl ProfileArg {
    /// The name the server's `profile` field takes.
    pub fn name(self) -> &'static str {
        match self {
            ProfileArg::Draft37 => "draft37",
            ProfileArg::Riot09 => "riot09",
        }
    }
}

impl From<ProfileArg> for Profile {
    fn from(p: ProfileArg) -> Self {
        match p {
            ProfileArg::Draft37 => Profile::Draft37,
            ProfileArg::Riot09 => Profile::Riot09,
        }
    }
}

#[derive(Args)]
pub struct KeygenArgs {
    /// Algorithm: ed25519 (RIOT) or es256 (P-256).
    #[arg(long, value_enum, default_value_t = AlgArg::Ed25519)]
    alg: AlgArg,
    /// Where to write the private key; the public key goes to <out without .pem>.pub.pem.
    #[arg(long, short)]
    out: PathBuf,
}

#[derive(Subcommand)]
pub enum ManifestCommand {
    /// Build an unsigned envelope (or a signed one with --key) from image files.
    Create(CreateArgs),
    /// Add a signature to an envelope.
    Sign {
        /// Private key (PKCS#8 PEM).
        #[arg(long)]
        key: PathBuf,
        /// Envelope to sign.
        input: PathBuf,
        /// Output file.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Check the digest and the signature with a public (or private) key, or a COSE_Mac0
    /// with a shared HMAC key; exit 1 if bad.
    Verify {
        /// Public key (SPKI PEM) or private key (PKCS#8 PEM).
        #[arg(long, required_unless_present = "hmac_key", conflicts_with = "hmac_key")]
        key: Option<PathBuf>,
        /// File holding the raw HMAC 256/256 secret (for COSE_Mac0-authenticated envelopes).
        #[arg(long)]
        hmac_key: Option<PathBuf>,
        /// Envelope.
        input: PathBuf,
    },
    /// Show what an envelope says.
    Inspect {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Also verify with this key; exit 1 (after the report) if the signature is invalid.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Envelope.
        input: PathBuf,
    },
}

#[derive(Args)]
pub struct CreateArgs {
    /// draft37 (IETF, tag 107) or riot09 (what RIOT devices parse).
    #[arg(long, value_enum, default_value_t = ProfileArg::Draft37)]
    profile: ProfileArg,
    /// Sequence number (RIOT: the app version, usually `date +%s`).
    #[arg(long)]
    seq: u64,
    /// Vendor domain: vendor-id = UUID5(DNS, domain). RIOT's default is riot-os.org.
    #[arg(long, default_value = "suitcase.local")]
    vendor_domain: String,
    /// Device class: class-id = UUID5(vendor-id, class). RIOT uses the board name.
    #[arg(long)]
    class: String,
    /// An image as URI=FILE or URI=FILE@SLOT (slot index, or flash offset for riot09,
    /// decimal or 0x hex). Several slotted images become try-each alternatives.
    #[arg(long = "image", required = true)]
    images: Vec<String>,
    /// The storage the image goes to (one component), as RIOT names it: ram,0 (or .ram.0)
    /// for a RAM region, /nvm0/SLOT0.txt for a VFS file, h'00' (the default) for riotboot
    /// flash slots. Elements are separated by ','; h'HEX' is raw bytes.
    #[arg(long)]
    component: Option<String>,
    /// Sign with this private key.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Output file.
    #[arg(long, short)]
    out: PathBuf,
}

pub fn write_key_pair(key: &SigningKey, path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let pem = key.to_pkcs8_pem()?;
    write_private(path, pem.as_bytes())?;
    let pub_path = path.with_extension("pub.pem");
    std::fs::write(&pub_path, key.verifying_key().to_public_key_pem()?)
        .with_context(|| format!("writing {}", pub_path.display()))?;
    Ok(())
}

fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}

pub fn keygen(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    let alg = Algorithm::from(args.alg);
    let key = SigningKey::generate(alg);
    write_key_pair(&key, &args.out)?;
    eprintln!(
        "wrote {} and {}",
        args.out.display(),
        args.out.with_extension("pub.pem").display()
    );
    Ok(ExitCode::SUCCESS)
}

fn read_key(path: &Path) -> anyhow::Result<SigningKey> {
    let pem = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    SigningKey::from_pkcs8_pem(&pem).with_context(|| format!("key {}", path.display()))
}

fn read_public(path: &Path) -> anyhow::Result<VerifyingKey> {
    let pem = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    VerifyingKey::from_any_pem(&pem).with_context(|| format!("key {}", path.display()))
}

fn read_envelope(path: &Path) -> anyhow::Result<Envelope> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Envelope::decode(&bytes).with_context(|| format!("decoding {}", path.display()))
}

fn parse_number(s: &str) -> anyhow::Result<u64> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.with_context(|| format!("{s:?} is not a number"))
}

fn parse_image(spec: &str) -> anyhow::Result<Image> {
    // URI=FILE[@SLOT]; the URI itself contains ':' and '/', never '='.
    let Some((uri, rest)) = spec.split_once('=') else {
        bail!("--image {spec:?}: expected URI=FILE or URI=FILE@SLOT");
    };
    let (file, slot) = match rest.rsplit_once('@') {
        Some((f, s)) => (f, Some(parse_number(s)?)),
        None => (rest, None),
    };
    let data = std::fs::read(file).with_context(|| format!("reading {file}"))?;
    Ok(Image::from_bytes(uri, &data, slot))
}

pub fn run(cmd: ManifestCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ManifestCommand::Create(a) => {
            let profile = Profile::from(a.profile);
            let vendor = builder::vendor_id(&a.vendor_domain);
            let class = builder::class_id(&vendor, &a.class);
            if profile == Profile::Riot09 && a.seq > u64::from(u32::MAX) {
                bail!(
                    "--seq {}: RIOT's sequence number is 32-bit (at most {})",
                    a.seq,
                    u32::MAX
                );
            }
            let mut b = ManifestBuilder::new(profile, a.seq, vendor, class);
            if let Some(c) = &a.component {
                b = b.component(builder::parse_component(c)?);
            }
            for spec in &a.images {
                b = b.image(parse_image(spec)?);
            }
            let manifest = b.build()?;
            let mut env = Envelope::unsigned(profile, &manifest)?;
            if let Some(k) = &a.key {
                let key = read_key(k)?;
                if profile == Profile::Riot09 && key.algorithm() != Algorithm::Ed25519 {
                    bail!("--key {}: RIOT verifies Ed25519 signatures only", k.display());
                }
                env = env.add_signature(&key)?;
            }
            if profile == Profile::Riot09 && env.encode().len() > suitcase_http::RIOT_MAX_MANIFEST {
                eprintln!(
                    "warning: the manifest is {} bytes; RIOT fetches at most {} (SUIT_MANIFEST_BUFSIZE)",
                    env.encode().len(),
                    suitcase_http::RIOT_MAX_MANIFEST
                );
            }
            std::fs::write(&a.out, env.encode()).with_context(|| format!("writing {}", a.out.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        ManifestCommand::Sign { key, input, out } => {
            let env = read_envelope(&input)?.add_signature(&read_key(&key)?)?;
            std::fs::write(&out, env.encode()).with_context(|| format!("writing {}", out.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        ManifestCommand::Verify { key, hmac_key, input } => {
            let env = read_envelope(&input)?;
            let result = match (key, hmac_key) {
                (Some(k), _) => env.verify(&read_public(&k)?),
                (None, Some(h)) => {
                    let secret = std::fs::read(&h).with_context(|| format!("reading {}", h.display()))?;
                    env.verify_mac(&suitcase_suit::MacKey::new(&secret))
                }
                (None, None) => bail!("--key or --hmac-key"),
            };
            match result {
                Ok(v) => {
                    println!(
                        "OK: {} manifest, sequence number {}",
                        env.profile(),
                        v.manifest().sequence_number
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e @ suitcase_suit::Error::MacNotSignature) => {
                    println!("FAILED: {e}: verify it with --hmac-key FILE (the shared secret)");
                    Ok(ExitCode::from(1))
                }
                Err(e) => {
                    println!("FAILED: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        ManifestCommand::Inspect { json, key, input } => {
            let env = read_envelope(&input)?;
            let (signature, valid) = match key {
                None => ("not checked".to_string(), true),
                Some(k) => match env.verify(&read_public(&k)?) {
                    Ok(_) => ("verified".to_string(), true),
                    Err(e @ suitcase_suit::Error::MacNotSignature) => {
                        (format!("invalid: {e} (use manifest verify --hmac-key)"), false)
                    }
                    Err(e) => (format!("invalid: {e}"), false),
                },
            };
            let report = inspect(&env, &signature);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_report(&report);
            }
            // With --key, the exit status says whether the signature checked out.
            Ok(if valid { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}

fn inspect(env: &Envelope, signature: &str) -> serde_json::Value {
    let m = env.manifest();
    let profile = env.profile();
    let params_json = |params: &suitcase_suit::manifest::Parameters,
                       fields: &mut serde_json::Map<String, serde_json::Value>| {
        for (k, v) in &params.0 {
            let value = match v {
                ParamValue::Uint(u) => json!(u),
                ParamValue::Bytes(b) => json!(hex::encode(b)),
                ParamValue::Text(t) => json!(t),
                ParamValue::Bool(b) => json!(b),
                ParamValue::Digest(d) => json!({"algorithm": d.algorithm, "digest": hex::encode(&d.bytes)}),
                ParamValue::Raw(r) => json!({"cbor": hex::encode(&r.0)}),
            };
            fields.insert(profile.parameter_name(*k).to_string(), value);
        }
    };
    let components: Vec<serde_json::Value> = m
        .component_views()
        .into_iter()
        .map(|(i, view)| {
            let id = m
                .common
                .components
                .get(i)
                .map(|c| c.0.iter().map(hex::encode).collect::<Vec<_>>());
            let mut fields = serde_json::Map::new();
            fields.insert("index".into(), json!(i));
            fields.insert("id".into(), json!(id));
            params_json(&view.parameters, &mut fields);
            if !view.alternatives.is_empty() {
                // try-each: each alternative (slot) on its own, never merged.
                let alternatives: Vec<serde_json::Value> = view
                    .alternatives
                    .iter()
                    .map(|alt| {
                        let mut f = serde_json::Map::new();
                        params_json(alt, &mut f);
                        serde_json::Value::Object(f)
                    })
                    .collect();
                fields.insert("alternatives".into(), json!(alternatives));
            }
            serde_json::Value::Object(fields)
        })
        .collect();
    let severable =
        |name: &str, present: bool, severed: bool| json!({"member": name, "present": present, "severed": severed});
    let sev = |s: &Option<Severable<suitcase_suit::manifest::CommandSequence>>| {
        (s.is_some(), matches!(s, Some(Severable::Severed(_))))
    };
    let (pf, pfs) = sev(&m.payload_fetch);
    let unauthenticated = env.unauthenticated_extensions();
    let (ins, inss) = sev(&m.install);
    json!({
        "profile": profile.name(),
        "manifest_version": m.version,
        "sequence_number": m.sequence_number,
        "manifest_digest": hex::encode(&env.manifest_digest().bytes),
        "claimed_digest": env.claimed_digest().map(|d| hex::encode(&d.bytes)),
        "authentication_blocks": env.authentication_blocks().len(),
        "signature": signature,
        "reference_uri": m.reference_uri,
        "components": components,
        "sequences": {
            "validate": m.validate.is_some(),
            "load": m.load.is_some(),
            "invoke": m.invoke.is_some(),
        },
        "severable": [
            severable("payload-fetch", pf, pfs),
            severable("install", ins, inss),
            severable("text", m.text.is_some(), matches!(m.text, Some(Severable::Severed(_)))),
        ],
        "severed_members_carried": env.severed_members().iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        "envelope_extensions": env.extensions().iter().map(|(k, v)| json!({
            "key": k,
            "size": v.len(),
            "authenticated": !unauthenticated.contains(k),
        })).collect::<Vec<_>>(),
        "integrated_payloads": env.integrated_payloads().iter().map(|(k, v)| json!({"key": k, "size": v.len()})).collect::<Vec<_>>(),
    })
}

fn print_report(r: &serde_json::Value) {
    println!("profile          {}", r["profile"].as_str().unwrap_or("?"));
    println!("sequence number  {}", r["sequence_number"]);
    println!("manifest digest  {}", r["manifest_digest"].as_str().unwrap_or("?"));
    println!(
        "signature        {} ({} block(s))",
        r["signature"].as_str().unwrap_or("?"),
        r["authentication_blocks"]
    );
    for c in r["components"].as_array().into_iter().flatten() {
        println!("component {}", c["index"]);
        if let Some(obj) = c.as_object() {
            for (k, v) in obj {
                if k != "index" && k != "alternatives" {
                    println!("  {k:<18} {v}");
                }
            }
        }
        for (j, alt) in c["alternatives"].as_array().into_iter().flatten().enumerate() {
            println!("  alternative {j} (try-each)");
            for (k, v) in alt.as_object().into_iter().flatten() {
                println!("    {k:<16} {v}");
            }
        }
    }
    let ext = r["envelope_extensions"].as_array().map_or(0, Vec::len);
    if ext > 0 {
        println!("extensions       {}", r["envelope_extensions"]);
    }
}
