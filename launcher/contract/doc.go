// Package contract is the rank contract: what every rank is told through
// its environment, built in one place (Contract) and read back in one
// place (ReadRankEnv).
//
// Both fronts use it: the torchrun job (package job) for the CLI's ranks,
// and the Go API (package launcher/mp) for its ranks and Pool workers. The
// launcher's core neither builds nor reads it: a Spec's environment is
// opaque to the core.
package contract
