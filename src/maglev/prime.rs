//! Primality test for table sizes.

/// The first twelve primes: as Miller–Rabin witnesses they decide every
/// `u64` exactly, and as divisors they cheaply settle most composites.
const SMALL_PRIMES: [u64; 12] = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37];

/// Exact primality for any `u64`.
///
/// Deterministic Miller–Rabin: the first twelve primes as witnesses are
/// enough below 3.3·10^24, so this never guesses and stays fast even for
/// sizes a caller might pass that are far beyond `MAX_SIZE`.
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    for p in SMALL_PRIMES {
        if n.is_multiple_of(p) {
            return n == p;
        }
    }
    // n is odd and > 37 here, so n - 1 is even and nonzero.
    let s = (n - 1).trailing_zeros();
    let d = (n - 1) >> s;
    'witness: for a in SMALL_PRIMES {
        let mut x = pow_mod(a, d, n);
        if x == 1 || x == n - 1 {
            continue;
        }
        for _ in 1..s {
            x = mul_mod(x, x, n);
            if x == n - 1 {
                continue 'witness;
            }
        }
        return false;
    }
    true
}

fn mul_mod(a: u64, b: u64, m: u64) -> u64 {
    // m > 37 and both results of `%` are < m, so the cast back is lossless.
    ((u128::from(a) * u128::from(b)) % u128::from(m)) as u64
}

fn pow_mod(mut base: u64, mut exp: u64, m: u64) -> u64 {
    let mut acc = 1;
    base %= m;
    while exp > 0 {
        if exp & 1 == 1 {
            acc = mul_mod(acc, base, m);
        }
        base = mul_mod(base, base, m);
        exp >>= 1;
    }
    acc
}
