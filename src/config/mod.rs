//! Loading rule files: one YAML file, or a directory of them (one domain per file).
//!
//! `load` either returns a complete [`RuleSet`] or every error it found, each with
//! file:line:column; it never returns half a rule set. `ratelimitd check` prints the errors,
//! `serve` refuses to start on them, and a reload keeps the running rules.
//!
//! Loading is two steps, [`read`] then [`Sources::parse`], so that a reload can tell from the
//! files' [`Sources::hash`] whether anything changed before parsing.

mod error;
pub mod limits;
mod tree;
mod validate;
mod yaml;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

pub use error::{ConfigError, ConfigErrorKind, ConfigErrors, Location};

use crate::rules::{Domain, RuleSet};

/// Loads `path`: a rule file, or a directory whose `*.yaml` / `*.yml` files each hold a domain.
pub fn load(path: &Path) -> Result<RuleSet, ConfigErrors> {
    read(path)?.parse()
}

/// The text of every rule file under a path, as read at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    files: Vec<(PathBuf, String)>,
}

/// Reads the rule files under `path` (see [`load`]) without parsing them.
pub fn read(path: &Path) -> Result<Sources, ConfigErrors> {
    let files = rule_files(path).map_err(|e| ConfigErrors(vec![e]))?;
    let mut errors = Vec::new();
    let mut texts = Vec::with_capacity(files.len());
    for file in files {
        // Refused before reading it: a huge file must not be read into memory to be refused.
        if let Ok(metadata) = fs::metadata(&file)
            && metadata.len() > limits::MAX_FILE_BYTES
        {
            let kind = ConfigErrorKind::FileTooBig(metadata.len());
            errors.push(ConfigError::in_file(&file, kind));
            continue;
        }
        match fs::read_to_string(&file) {
            Ok(text) => texts.push((file, text)),
            Err(e) => errors.push(ConfigError::in_file(&file, ConfigErrorKind::Io(e))),
        }
    }
    if errors.is_empty() {
        Ok(Sources { files: texts })
    } else {
        Err(ConfigErrors(errors))
    }
}

impl Sources {
    /// A fingerprint of the files' names and contents, as 16 hex digits: equal sources have
    /// equal hashes within one build of ratelimitd.
    pub fn hash(&self) -> String {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut hasher = DefaultHasher::new();
        for (file, text) in &self.files {
            file.file_name().hash(&mut hasher);
            text.hash(&mut hasher);
        }
        format!("{:016x}", hasher.finish())
    }

    /// Parses every file into one rule set, or returns every error found.
    pub fn parse(&self) -> Result<RuleSet, ConfigErrors> {
        let mut errors = Vec::new();
        let mut domains: Vec<Domain> = Vec::new();
        let mut first_file: HashMap<String, PathBuf> = HashMap::new();
        for (file, text) in &self.files {
            add_domain(file, text, &mut domains, &mut first_file, &mut errors);
        }
        if errors.is_empty() {
            Ok(RuleSet::new(domains))
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// Parses one file and adds its domain, unless another file already defined it.
fn add_domain(
    file: &Path,
    text: &str,
    domains: &mut Vec<Domain>,
    first_file: &mut HashMap<String, PathBuf>,
    errors: &mut Vec<ConfigError>,
) {
    match parse_domain(file, text) {
        Ok(domain) => {
            if let Some(first) = first_file.get(&domain.name) {
                errors.push(ConfigError::in_file(
                    file,
                    ConfigErrorKind::DuplicateDomain {
                        domain: domain.name.clone(),
                        first: first.clone(),
                    },
                ));
                return;
            }
            first_file.insert(domain.name.clone(), file.to_path_buf());
            domains.push(domain);
        }
        Err(mut found) => errors.append(&mut found),
    }
}

/// Parses one rule file's text; `file` is only used in messages.
pub fn parse_domain(file: &Path, text: &str) -> Result<Domain, Vec<ConfigError>> {
    let root = yaml::parse(file, text).map_err(|e| vec![e])?;
    let mut reader = yaml::Reader::new(file);
    match validate::domain(&mut reader, &root) {
        Some(domain) if reader.errors.is_empty() => Ok(domain),
        _ => Err(reader.errors),
    }
}

/// What the rule files under a path look like from outside: name, size, modification time and
/// inode of each. Equal fingerprints mean the files need not be read again (a reload polls
/// with this, and reads and hashes only when it changed); a change of any is worth a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(Vec<(PathBuf, u64, i64, i64, u64)>);

/// The files' [`Fingerprint`]; `None` when they cannot even be listed or looked at (then reading
/// them says why).
pub fn fingerprint(path: &Path) -> Option<Fingerprint> {
    use std::os::unix::fs::MetadataExt;
    let files = rule_files(path).ok()?;
    let mut stats = Vec::with_capacity(files.len());
    for file in files {
        let m = fs::metadata(&file).ok()?;
        stats.push((file, m.len(), m.mtime(), m.mtime_nsec(), m.ino()));
    }
    Some(Fingerprint(stats))
}

/// The rule files under `path`, sorted by name so that loads are repeatable.
///
/// Hidden entries are skipped: Kubernetes mounts a ConfigMap as `..data` symlinks beside the
/// visible files, and editors leave `.swp` files. A rule file that cannot be opened (a dangling
/// symlink, a symlink loop, no permission) is an error, never skipped: its domain must not
/// disappear without a word.
fn rule_files(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let metadata =
        fs::metadata(path).map_err(|e| ConfigError::in_file(path, ConfigErrorKind::Io(e)))?;
    if !metadata.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries =
        fs::read_dir(path).map_err(|e| ConfigError::in_file(path, ConfigErrorKind::Io(e)))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ConfigError::in_file(path, ConfigErrorKind::Io(e)))?;
        let file = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let named_as_rules =
            !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"));
        if !named_as_rules {
            continue;
        }
        match fs::metadata(&file) {
            Ok(metadata) if metadata.is_file() => files.push(file),
            // A directory named `*.yaml` holds no rules of its own.
            Ok(_) => {}
            Err(e) => return Err(ConfigError::in_file(&file, ConfigErrorKind::Io(e))),
        }
    }
    if files.is_empty() {
        return Err(ConfigError::in_file(path, ConfigErrorKind::NoRuleFiles));
    }
    files.sort();
    Ok(files)
}
