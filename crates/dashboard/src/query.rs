//! A state request's options, read from its query string as Ray's state client sends
//! them: `limit`, `detail`, `timeout`, and filters as three aligned repeated keys
//! (`filter_keys=state&filter_predicates=%3D&filter_values=ALIVE`). Parameters Ray's
//! client adds that mean nothing here (`exclude_driver`, `server_timeout_multiplier`)
//! are ignored, as Ray's server ignores what it does not use; a value that cannot be
//! read is an error that names it.

use percent_encoding::percent_decode_str;

/// Ray's default page size.
pub const DEFAULT_LIMIT: usize = 100;
/// Ray's most rows one response may hold (`RAY_MAX_LIMIT_FROM_API_SERVER`).
pub const MAX_LIMIT: usize = 10_000;
const DEFAULT_TIMEOUT_S: u64 = 30;

/// Why a request cannot be answered; each is an HTTP 400 whose message names the problem.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QueryError {
    #[error("invalid value {value:?} for {name}: {why}")]
    BadValue { name: &'static str, value: String, why: &'static str },
    #[error("given limit {0} exceeds the supported limit {MAX_LIMIT}; use a lower limit")]
    LimitTooLarge(usize),
    #[error(
        "filters need as many filter_keys as filter_predicates and filter_values; got {keys}, {predicates} and {values}"
    )]
    MisalignedFilters { keys: usize, predicates: usize, values: usize },
    #[error("unsupported filter predicate {0:?}; available predicates: =, !=")]
    UnknownPredicate(String),
    #[error("the given filter column {column:?} is not supported; supported filter columns: {supported}")]
    UnknownColumn { column: String, supported: String },
    #[error("filter value {value:?} for {column} is not a {kind}")]
    BadFilterValue { column: String, value: String, kind: &'static str },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Predicate {
    Equal,
    NotEqual,
}

impl Predicate {
    fn parse(text: &str) -> Result<Self, QueryError> {
        match text {
            "=" => Ok(Self::Equal),
            "!=" => Ok(Self::NotEqual),
            other => Err(QueryError::UnknownPredicate(other.to_string())),
        }
    }
}

/// `key predicate value`; several filters all have to hold.
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    pub key: String,
    pub predicate: Predicate,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ListOptions {
    pub limit: usize,
    pub detail: bool,
    /// Seconds the caller waits: the bound on asking other processes (objects); the
    /// tables the GCS holds are a snapshot taken at once.
    pub timeout_s: u64,
    pub filters: Vec<Filter>,
}

impl Default for ListOptions {
    fn default() -> Self {
        Self { limit: DEFAULT_LIMIT, detail: false, timeout_s: DEFAULT_TIMEOUT_S, filters: Vec::new() }
    }
}

/// The `name=value` pairs of a query string, percent-decoded (`+` is a space).
pub(crate) fn pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    let decode = |text: &str| percent_decode_str(&text.replace('+', " ")).decode_utf8_lossy().into_owned();
    query.split('&').filter(|pair| !pair.is_empty()).map(move |pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(name), decode(value))
    })
}

/// A boolean as Ray's clients spell it (`true`, `True`, `1`, ...).
pub fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

impl ListOptions {
    pub fn from_query(query: Option<&str>) -> Result<Self, QueryError> {
        let mut options = Self::default();
        let (mut keys, mut predicates, mut values) = (Vec::new(), Vec::new(), Vec::new());
        for (name, value) in pairs(query.unwrap_or_default()) {
            match name.as_str() {
                "limit" => {
                    options.limit = value.parse().map_err(|_| QueryError::BadValue {
                        name: "limit",
                        value: value.clone(),
                        why: "expected a whole number",
                    })?;
                    if options.limit > MAX_LIMIT {
                        return Err(QueryError::LimitTooLarge(options.limit));
                    }
                }
                "detail" => {
                    options.detail = parse_bool(&value).ok_or(QueryError::BadValue {
                        name: "detail",
                        value,
                        why: "expected true or false",
                    })?
                }
                "timeout" => {
                    // Ray's client sends whole seconds; a fraction is accepted too.
                    let seconds = value.parse::<f64>().ok().filter(|s| *s >= 1.0);
                    let Some(seconds) = seconds else {
                        return Err(QueryError::BadValue {
                            name: "timeout",
                            value,
                            why: "expected seconds, at least 1",
                        });
                    };
                    options.timeout_s = seconds as u64;
                }
                "filter_keys" => keys.push(value),
                "filter_predicates" => predicates.push(value),
                "filter_values" => values.push(value),
                _ => {}
            }
        }
        if keys.len() != predicates.len() || keys.len() != values.len() {
            return Err(QueryError::MisalignedFilters {
                keys: keys.len(),
                predicates: predicates.len(),
                values: values.len(),
            });
        }
        for ((key, predicate), value) in keys.into_iter().zip(predicates).zip(values) {
            options.filters.push(Filter { key, predicate: Predicate::parse(&predicate)?, value });
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rays_parameters_and_ignores_the_rest() {
        let options = ListOptions::from_query(Some(
            "limit=5&detail=True&timeout=24&exclude_driver=True&server_timeout_multiplier=0.8\
             &filter_keys=state&filter_predicates=%3D&filter_values=ALIVE\
             &filter_keys=name&filter_predicates=!%3D&filter_values=my+actor",
        ))
        .expect("valid");
        assert_eq!((options.limit, options.detail, options.timeout_s), (5, true, 24));
        assert_eq!(
            options.filters,
            vec![
                Filter { key: "state".into(), predicate: Predicate::Equal, value: "ALIVE".into() },
                Filter { key: "name".into(), predicate: Predicate::NotEqual, value: "my actor".into() },
            ]
        );
        assert_eq!(ListOptions::from_query(None), Ok(ListOptions::default()));
    }

    #[test]
    fn bad_values_are_named() {
        let error = |query: &str| ListOptions::from_query(Some(query)).expect_err(query).to_string();
        assert!(error("limit=many").contains("limit"));
        assert!(error("limit=10001").contains("10000"));
        assert!(error("detail=maybe").contains("detail"));
        assert!(error("timeout=0").contains("timeout"));
        assert!(error("filter_keys=state&filter_predicates=~&filter_values=x").contains("\"~\""));
        assert!(error("filter_keys=state&filter_values=x").contains("filter_predicates"));
    }
}
