//! `client tls ca` and `client tls cert`: the cluster's certificates, made in-process
//! (see [`registro::certs`]).

use std::path::PathBuf;

use registro::certs::{self, Outcome};
use registro::tls::Role;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Make the cluster's CA: DIR/ca.pem and DIR/ca-key.pem (kept if present).
    Ca {
        /// Folder of the certificates.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Replace an existing CA: every certificate it signed stops being trusted.
        #[arg(long)]
        force: bool,
    },
    /// Make DIR/NAME.pem and DIR/NAME-key.pem, signed by DIR's CA, for spiffe://registro/ROLE/NAME (kept if present).
    Cert {
        /// Folder of the certificates (and of the CA that signs them).
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// What the holder may do: headnode, datanode or client.
        #[arg(long, value_enum)]
        role: Role,
        /// The holder's name: a datanode may only register under this name. Also a DNS (or IP) name in the certificate.
        #[arg(long)]
        name: String,
        /// Another DNS name or IP address peers may dial the holder by (repeatable).
        #[arg(long = "host", value_name = "H")]
        hosts: Vec<String>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = certs::DEFAULT_VALIDITY_DAYS)]
        days: u32,
        /// Replace an existing certificate of this name.
        #[arg(long)]
        force: bool,
    },
}

pub fn run(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Ca { dir, force } => {
            let (cert, key) = certs::ca_paths(&dir);
            match certs::write_ca(&dir, force)? {
                Outcome::Written => println!("wrote {} and {}", cert.display(), key.display()),
                Outcome::Kept => println!(
                    "kept the CA in {} ({} exists; --force replaces it)",
                    dir.display(),
                    cert.display()
                ),
            }
        }
        Command::Cert {
            dir,
            role,
            name,
            hosts,
            days,
            force,
        } => {
            let identity = certs::identity(role, &name);
            let (cert, key) = certs::cert_paths(&dir, &name);
            match certs::write_cert(&dir, &identity, &hosts, days, force)? {
                Outcome::Written => println!(
                    "wrote {} and {} for {identity}",
                    cert.display(),
                    key.display()
                ),
                Outcome::Kept => println!(
                    "kept {} ({} exists; --force replaces it)",
                    name,
                    cert.display()
                ),
            }
        }
    }
    Ok(0)
}
