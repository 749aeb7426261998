//! The only crate with SQL: the PostgreSQL connection pool, the versioned
//! migrations (`migrations/`), and repository functions that take and return
//! domain types.
//!
//! Every query is parameterised; batch writes are one statement per batch
//! (`UNNEST`), not one per row.

mod health;
mod nodes;
mod tasks;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;
use tracing::info;

pub use health::NodeState;
pub use nodes::{NewNode, NodeFilter, NodeRow, SyncOutcome, UpdateOutcome, WriteError, changed_fields};
pub use tasks::{ClaimedRun, RunOutcome, TaskRow, TaskWriteError};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// PostgreSQL settings shared by every service that uses the database.
#[derive(Clone, clap::Args)]
pub struct DbArgs {
    /// PostgreSQL URL (`postgres://user@host:5432/db`); the password may come
    /// from `PGPASSWORD`-style URL parts, set only through the environment.
    #[arg(
        id = "database_url",
        long = "database-url",
        value_name = "URL",
        env = "PGNM_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/pgnm"
    )]
    pub url: String,
    /// Connections in the pool.
    #[arg(
        id = "db_pool_size",
        long = "db-pool-size",
        value_name = "N",
        env = "PGNM_DB_POOL_SIZE",
        default_value_t = 8
    )]
    pub pool_size: usize,
    /// Longest wait for a connection and longest statement, in milliseconds.
    #[arg(
        id = "db_timeout_ms",
        long = "db-timeout-ms",
        value_name = "MS",
        env = "PGNM_DB_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub timeout_ms: u64,
    /// Database password (overrides one in the URL); set it from a secret, in the environment only.
    #[arg(
        id = "database_password",
        long = "database-password",
        value_name = "PASSWORD",
        env = "PGNM_DATABASE_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// PEM file of the CA certificates that sign the database server's certificate,
    /// used with `sslmode=require` in the URL; without it the Mozilla root
    /// certificates are trusted.
    #[arg(id = "database_ca_file", long = "database-ca-file", value_name = "FILE", env = "PGNM_DATABASE_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for DbArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password (a URL holding one shows it masked).
        let url = match (self.url.find("://"), self.url.rfind('@')) {
            (Some(scheme), Some(at)) if self.url[scheme + 3..at].contains(':') => {
                let user = self.url[scheme + 3..at].split(':').next().unwrap_or("");
                format!("{}{user}:***{}", &self.url[..scheme + 3], &self.url[at..])
            }
            _ => self.url.clone(),
        };
        f.debug_struct("DbArgs")
            .field("url", &url)
            .field("pool_size", &self.pool_size)
            .field("timeout_ms", &self.timeout_ms)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl DbArgs {
    /// Returns settings for `url` with the defaults otherwise.
    pub fn new(url: impl Into<String>) -> Self {
        DbArgs { url: url.into(), pool_size: 8, timeout_ms: 5000, password: None, ca_file: None }
    }
}

/// What can go wrong talking to the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL cannot be used.
    #[error("invalid database url: {0}")]
    Config(String),
    /// No connection could be had in time.
    #[error("database unavailable")]
    Unavailable(#[source] deadpool_postgres::PoolError),
    /// A statement failed.
    #[error("database query failed")]
    Query(#[from] tokio_postgres::Error),
    /// The migrations could not be applied.
    #[error("database migration failed")]
    Migrate(#[source] refinery::Error),
    /// The schema is older (or newer) than this build expects.
    #[error("database schema is at version {found}, this build needs {expected} (run `pgnm-checker migrate`)")]
    SchemaVersion {
        /// The version found.
        found: i32,
        /// The version this build was made for.
        expected: i32,
    },
}

impl StoreError {
    /// Returns whether the failure is the database being out of reach (worth a
    /// retry later), rather than a bad statement.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Query(e) => match e.as_db_error() {
                None => true,
                // The server going away or refusing work for now (connection
                // exceptions, shutdown, statement timeout, serialization failure
                // and deadlock): a retry can succeed.
                Some(db) => {
                    let code = db.code().code();
                    code.starts_with("08")
                        || code.starts_with("57P")
                        || ["57014", "40001", "40P01", "53300"].contains(&code)
                }
            },
            _ => false,
        }
    }
}

/// The database: a pool of connections.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    config: tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("tls", &self.tls.is_some()).finish_non_exhaustive()
    }
}

impl Store {
    /// Creates the pool. Connections are made on first use, so this does not fail
    /// when the database is down; [`Store::check`] does.
    pub fn new(args: &DbArgs) -> Result<Store, StoreError> {
        let mut config: tokio_postgres::Config = args.url.parse().map_err(|e| StoreError::Config(format!("{e}")))?;
        if let Some(password) = &args.password {
            config.password(password);
        }
        // TLS when the URL asks for it (`sslmode=require`): encrypted and verified.
        let tls = match (config.get_ssl_mode(), &args.ca_file) {
            (SslMode::Require, ca_file) => {
                let rustls = pgnm_runtime::tls::client_config(ca_file.as_deref()).map_err(StoreError::Config)?;
                Some(MakeRustlsConnect::new(rustls))
            }
            (_, Some(_)) => {
                return Err(StoreError::Config(
                    "a CA file is set (PGNM_DATABASE_CA_FILE) but the URL does not ask for TLS (sslmode=require)"
                        .to_owned(),
                ));
            }
            (_, None) => None,
        };
        let timeout = Duration::from_millis(args.timeout_ms.max(1));
        let options = format!("{} -c statement_timeout={}", config.get_options().unwrap_or(""), timeout.as_millis());
        config.options(options.trim());
        config.connect_timeout(timeout);
        if config.get_application_name().is_none() {
            config.application_name("pgnm");
        }
        let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Fast };
        let manager = match &tls {
            Some(tls) => Manager::from_config(config.clone(), tls.clone(), manager_config),
            None => Manager::from_config(config.clone(), NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(args.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|e| StoreError::Config(e.to_string()))?;
        Ok(Store { pool, config, tls })
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(StoreError::Unavailable)
    }

    /// Checks that the database answers and that its schema is the one this build
    /// expects.
    pub async fn check(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        let expected = latest_version();
        let exists: bool =
            client.query_one("SELECT to_regclass('refinery_schema_history') IS NOT NULL", &[]).await?.get(0);
        let found: i32 = if exists {
            client.query_one("SELECT coalesce(max(version), 0) FROM refinery_schema_history", &[]).await?.get(0)
        } else {
            0
        };
        if found == expected { Ok(()) } else { Err(StoreError::SchemaVersion { found, expected }) }
    }

    /// Returns a readiness check (see `pgnm_runtime::Readiness`): the database
    /// answers and its schema is the one this build expects.
    pub fn ready_check(
        &self,
    ) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync + 'static {
        let store = self.clone();
        move || {
            let store = store.clone();
            Box::pin(async move { store.check().await.map_err(|e| pgnm_runtime::error_chain(&e)) })
        }
    }

    /// Applies the pending migrations, over a connection of its own holding an
    /// advisory lock, so that two migration runs never interleave. Returns the
    /// versions applied.
    pub async fn migrate(&self) -> Result<Vec<i32>, StoreError> {
        let (mut client, driver) = match &self.tls {
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await?;
                (client, tokio::spawn(async move { connection.await.map(|_| ()) }))
            }
            None => {
                let (client, connection) = self.config.connect(NoTls).await?;
                (client, tokio::spawn(async move { connection.await.map(|_| ()) }))
            }
        };
        client.execute("SELECT pg_advisory_lock(hashtext('pgnm.migrate'))", &[]).await?;
        let report = embedded::migrations::runner().run_async(&mut client).await.map_err(StoreError::Migrate);
        let _ = client.execute("SELECT pg_advisory_unlock(hashtext('pgnm.migrate'))", &[]).await;
        drop(client);
        let _ = driver.await;
        let applied: Vec<i32> = report?.applied_migrations().iter().map(|m| m.version()).collect();
        info!(?applied, "database migrated");
        Ok(applied)
    }
}

/// Returns the schema version this build expects.
pub fn latest_version() -> i32 {
    embedded::migrations::runner().get_migrations().iter().map(|m| m.version()).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_never_shows_a_password() {
        let mut args = super::DbArgs::new("postgres://pgnm:hunter2@db:5432/pgnm");
        args.password = Some("s3cret".into());
        let shown = format!("{args:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("pgnm:***@db"), "{shown}");
    }
}
