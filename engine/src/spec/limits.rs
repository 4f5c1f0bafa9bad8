//! How large a fleet file may be and grow, so that no input can make fleet exhaust memory.
//!
//! In: nothing (plain data; the CLI fills it from its options). Out: [`Limits`], which
//! `spec::text`, `spec::yaml` and `spec::expand` check before they allocate anything in
//! proportion to a value from the file (`render::fleet` bounds the rendered bytes itself). Each limit that is hit is a problem at the offending
//! value, saying which option raises it.

/// The limits one compilation runs under. The defaults are far above any fleet an operator
/// writes by hand and far below what would exhaust a CI runner's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes in one fleet file (`--max-file-size`).
    pub file_bytes: usize,
    /// YAML nodes copied by aliases (`*name`) in one file, all aliases together
    /// (`--max-alias-nodes`). An alias of an alias of … doubles at each step; this caps the sum.
    pub alias_nodes: usize,
    /// Members of one pool (`size`) or one matrix entry (`matrix.count`) (`--max-pool-size`).
    pub pool_size: u32,
    /// Combinations of one matrix: the product of its axes' lengths (`--max-matrix`).
    pub matrix_combinations: usize,
    /// Resources of the whole fleet after expansion, hosts included (`--max-resources`).
    pub resources: usize,
}

impl Limits {
    /// Default of [`Limits::file_bytes`]: 4 MiB, a thousand times the largest fleet file in
    /// `fleets/`.
    pub const DEFAULT_FILE_BYTES: usize = 4 * 1024 * 1024;
    /// Default of [`Limits::alias_nodes`].
    pub const DEFAULT_ALIAS_NODES: usize = 100_000;
    /// Default of [`Limits::pool_size`].
    pub const DEFAULT_POOL_SIZE: u32 = 10_000;
    /// Default of [`Limits::matrix_combinations`].
    pub const DEFAULT_MATRIX_COMBINATIONS: usize = 10_000;
    /// Default of [`Limits::resources`].
    pub const DEFAULT_RESOURCES: usize = 100_000;
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            file_bytes: Limits::DEFAULT_FILE_BYTES,
            alias_nodes: Limits::DEFAULT_ALIAS_NODES,
            pool_size: Limits::DEFAULT_POOL_SIZE,
            matrix_combinations: Limits::DEFAULT_MATRIX_COMBINATIONS,
            resources: Limits::DEFAULT_RESOURCES,
        }
    }
}

/// How deeply YAML may nest, aliases included. Not an option: fleet files nest about six
/// levels, and the loader reads the tree recursively, so this bounds its stack.
pub(crate) const MAX_DEPTH: usize = 64;
