//! Command-line flags of the storage benchmarks: `--name value` pairs,
//! with a clear panic for a flag without its value or a value that does
//! not parse.

use std::str::FromStr;

/// One `--name value` pair.
pub(crate) struct Flag {
    pub(crate) name: String,
    pub(crate) value: String,
}

impl Flag {
    /// The value as a `T`.
    pub(crate) fn parse<T: FromStr>(&self) -> T {
        self.value
            .parse()
            .unwrap_or_else(|_| panic!("{}: '{}' is not a valid value", self.name, self.value))
    }

    /// For the catch-all arm of a `match` on the name.
    pub(crate) fn unknown(&self) -> ! {
        panic!("unknown flag {}", self.name)
    }
}

/// The program's flags, in order.
pub(crate) fn flags() -> impl Iterator<Item = Flag> {
    let mut args = std::env::args().skip(1);
    std::iter::from_fn(move || {
        let name = args.next()?;
        let value = args
            .next()
            .unwrap_or_else(|| panic!("{name} needs a value"));
        Some(Flag { name, value })
    })
}
