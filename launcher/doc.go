// Package launcher owns rank processes: it builds each rank's command,
// environment and file descriptors, starts the ranks with a start method
// (spawn: a fresh exec per rank; forkserver: Python ranks forked from one
// server that imported their heavy modules once, see Forkserver),
// supervises them, applies the
// first-failure policy, forwards signals, relays their output line by line,
// and reads the error files they leave behind.
//
// The lifecycle of a job is:
//
//	g, err := launcher.Start(ctx, specs, opts) // every rank started, or none left running
//	...                                        // g.Signal / g.Stop from other goroutines
//	res := g.Wait()                            // every rank reaped, every goroutine done
//
// Supervision is event-driven: one waiter per rank blocks in wait4 and reports
// the exit at once, so the launcher idles at no CPU while ranks run. The first
// rank to exit non-zero or by a signal is the root cause; every other rank's
// whole process group gets SIGTERM at once and SIGKILL after the grace period.
//
// No rank outlives the launcher: each rank leads its own process group, has
// SIGKILL as its parent-death signal (set from a locked OS thread that lives as
// long as the ranks), and a small guard process, watching a pipe only the
// launcher holds, kills every rank's process group when the launcher dies, even
// by SIGKILL.
//
// Linux is the target. On other platforms the package builds, and Start
// returns ErrUnsupported.
package launcher
