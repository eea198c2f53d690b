//! HSM inventory: which PKCS#11 modules and tokens keybroker may use, where they are, and how to log in.
