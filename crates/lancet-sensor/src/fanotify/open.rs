pub struct SensitiveOpenWatcher;
pub const DEFAULT_SENSITIVE_PATHS: &[&str] = &[];
