// Package guardrole is the guard process of package contain: the running
// binary re-executed (argv[0] Name, Env=1 in its environment) becomes the
// guard in this package's init, and exits before main.
//
// It is a package of its own, importing only packages a Go program
// initialises first, so that the guard starts at once: Go runs a
// package's init once every package it imports has run its own, and
// picks among the ready ones in import-path order, so a package that
// imported path/filepath, say, would have waited for grpc's and
// protobuf's inits in the mpspawn CLI (about 3 ms of CPU at every job's
// start).
package guardrole
