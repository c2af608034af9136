//! `step-server user add|remove|list|passwd|hash`: accounts for
//! `--auth accounts`, kept in the storage `--data-dir`/`--storage` name (the
//! same flags and variables as the server's), and `--accounts-file`
//! imports.
//!
//! Passwords are never flags (they would show in `ps` and shell history):
//! read from a prompt when stdin is a terminal, else one line from stdin.

use std::io::{BufRead, IsTerminal};
use std::path::Path;

use crate::accounts::{AuthMode, hash_password, is_valid_hash};
use crate::auth::PUBLIC_NAME;
use crate::config::ServiceArgs;
pub use crate::config::{ServerCommand, UserCommand};
use crate::store::{Account, Storage, StoreError};

/// Longest account name: LOGIN's cap on usernames.
const MAX_NAME: usize = 256;

/// Why a `user` command failed, worded for the person who typed it.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user {0:?} exists already; change its password with `step-server user passwd`")]
    Exists(String),
    #[error("no user {0:?}")]
    NoSuchUser(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
}

fn check_name(name: &str) -> Result<(), UserError> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(UserError::Invalid(format!(
            "a user name must be 1 to {MAX_NAME} bytes"
        )));
    }
    if name == PUBLIC_NAME {
        return Err(UserError::Invalid(format!(
            "{PUBLIC_NAME:?} is the public identity's reserved name: no password logs in as it. \
             To publish into the public area, add an account of another name and start the \
             server with --public-user NAME"
        )));
    }
    Ok(())
}

/// A fresh account epoch: random, so a removed and re-added account never
/// gets an epoch its old tokens were minted under.
pub fn new_epoch() -> u64 {
    rand::RngCore::next_u64(&mut rand::rng()).max(1)
}

/// The password: prompted for (twice, to catch typos) on a terminal, else
/// the first line of stdin without its line ending. Shorter than `min`
/// characters is refused.
fn read_password(name: Option<&str>, min: usize) -> Result<String, UserError> {
    let password = if std::io::stdin().is_terminal() {
        let who = name.map_or(String::new(), |n| format!(" for {n}"));
        let first = rpassword::prompt_password(format!("Password{who}: "))?;
        let again = rpassword::prompt_password("Again: ")?;
        if first != again {
            return Err(UserError::Invalid("the passwords differ".into()));
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    if password.is_empty() {
        return Err(UserError::Invalid(
            "empty password: type one at the prompt, or give it as a line on stdin".into(),
        ));
    }
    let len = password.chars().count();
    if len < min {
        return Err(UserError::Invalid(format!(
            "password too short ({len} characters): at least {min} are needed \
             (--min-password-len / STEP_MIN_PASSWORD_LEN)"
        )));
    }
    Ok(password)
}

async fn hash_off_thread(password: String) -> Result<String, UserError> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| UserError::Io(std::io::Error::other(e)))?
        .map_err(|e| UserError::Io(std::io::Error::other(e)))
}

/// Run one `user` command over the account store `open` opens (not opened
/// for `hash`), under the settings of `args` (the servers' mode, the
/// shortest password). Returns what to print on stdout.
pub async fn run(
    cmd: &UserCommand,
    args: &ServiceArgs,
    open: impl FnOnce() -> std::io::Result<std::sync::Arc<dyn Storage>>,
) -> Result<String, UserError> {
    let min = args.min_password_len;
    if let UserCommand::Hash = cmd {
        let password = read_password(None, min)?;
        return Ok(format!("{}\n", hash_off_thread(password).await?));
    }
    if args.auth == AuthMode::Open && matches!(cmd, UserCommand::Add { .. }) {
        eprintln!(
            "note: a server in open mode (the default) ignores accounts; start it with \
             --auth accounts (STEP_AUTH=accounts)"
        );
    }
    let storage = open()?;
    match cmd {
        UserCommand::Add { name } => {
            check_name(name)?;
            // Refused before the prompt when it is bound to fail.
            if storage.account_get(name).await?.is_some() {
                return Err(UserError::Exists(name.clone()));
            }
            let password_hash = hash_off_thread(read_password(Some(name), min)?).await?;
            let account = Account {
                name: name.clone(),
                password_hash,
                epoch: new_epoch(),
            };
            match storage.account_create(&account).await {
                Err(StoreError::Exists) => Err(UserError::Exists(name.clone())),
                r => r
                    .map(|()| format!("added user {name}\n"))
                    .map_err(Into::into),
            }
        }
        UserCommand::Passwd { name } => {
            if storage.account_get(name).await?.is_none() {
                return Err(UserError::NoSuchUser(name.clone()));
            }
            let password_hash = hash_off_thread(read_password(Some(name), min)?).await?;
            set_password(storage.as_ref(), name, password_hash).await?;
            Ok(format!("changed the password of {name}\n"))
        }
        UserCommand::Remove { name } => match storage.account_delete(name).await {
            Err(StoreError::NotFound) => Err(UserError::NoSuchUser(name.clone())),
            r => r
                .map(|()| format!("removed user {name}\n"))
                .map_err(Into::into),
        },
        UserCommand::List => {
            let names = storage.account_list().await?;
            Ok(names.iter().map(|n| format!("{n}\n")).collect())
        }
        UserCommand::Hash => unreachable!("answered above"),
    }
}

/// Give account `name` the password whose hash is `password_hash`, under a
/// new epoch: the old password and every token minted before end at once
/// (within the servers' epoch cache, two seconds).
pub async fn set_password(
    storage: &dyn Storage,
    name: &str,
    password_hash: String,
) -> Result<(), UserError> {
    let account = Account {
        name: name.to_owned(),
        password_hash,
        epoch: new_epoch(),
    };
    match storage.account_replace(&account).await {
        Err(StoreError::NotFound) => Err(UserError::NoSuchUser(name.to_owned())),
        r => r.map_err(Into::into),
    }
}

/// Import `--accounts-file` into `storage`: each `NAME:HASH` line creates
/// the account or replaces its hash. Every line is checked before anything
/// is written, so a bad file changes nothing. Returns how many accounts.
pub async fn import_accounts_file(storage: &dyn Storage, path: &Path) -> Result<usize, UserError> {
    let text = std::fs::read_to_string(path)?;
    let mut accounts = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // PHC strings hold no ':', so the last one ends the name.
        let Some((name, hash)) = line.rsplit_once(':') else {
            return Err(UserError::Invalid(format!(
                "line {}: expected NAME:HASH",
                n + 1
            )));
        };
        check_name(name).map_err(|e| UserError::Invalid(format!("line {}: {e}", n + 1)))?;
        if !is_valid_hash(hash) {
            return Err(UserError::Invalid(format!(
                "line {}: not an argon2 hash (make one with `step-server user hash`)",
                n + 1
            )));
        }
        accounts.push(Account {
            name: name.to_owned(),
            password_hash: hash.to_owned(),
            epoch: new_epoch(),
        });
    }
    for account in &accounts {
        match storage.account_create(account).await {
            // Imported at every start: an unchanged password keeps its
            // epoch (and its tokens); a changed one ends them.
            Err(StoreError::Exists) => match storage.account_get(&account.name).await? {
                Some(now) if now.password_hash == account.password_hash => {}
                _ => storage.account_replace(account).await?,
            },
            r => r?,
        }
    }
    Ok(accounts.len())
}
