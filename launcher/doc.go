// Package launcher owns rank processes: supervision, the torchrun job and
// the start methods.
//
// Supervision: Start starts one process per Spec with a StartMethod (spawn,
// the default, forks and execs each rank; a Forkserver forks Python ranks
// from one server that imported their heavy modules once), and the Group
// it returns supervises them: the first rank to exit non-zero or by a
// signal is the root cause, and every other rank's process group gets
// SIGTERM at once and SIGKILL after the grace period; signals the launcher
// receives are forwarded; output is relayed line by line; error files are
// read. Channels give ranks control channels to an ipc.Broker, served by
// the one read loop ipc.Broker.Serve.
//
//	g, err := launcher.Start(ctx, specs, opts) // every rank started, or none left running
//	...                                        // g.Signal / g.Stop from other goroutines
//	res := g.Wait()                            // every rank reaped, every goroutine done
//
// Supervision is event-driven: one waiter per rank blocks in wait4 and reports
// the exit at once, so the launcher idles at no CPU while ranks run.
//
// No rank outlives the launcher: each rank leads its own process group, has
// SIGKILL as its parent-death signal (set from a locked OS thread that lives as
// long as the ranks), and a small guard process, watching a pipe only the
// launcher holds, kills every rank's process group when the launcher dies, even
// by SIGKILL.
//
// The torchrun job: a Job is one node's part of a launch, the same command
// as NProcPerNode ranks with torchrun's log layout, error files and
// summary. Every rank's environment is the rank contract (Contract), built
// from a rendezvous.Membership and each rank's place.Rank; ranks read it
// back with ReadRankEnv.
//
// The Go API (Register, Spawn, Pool) is package launcher/mp, built on Start.
//
// Linux is the target. On other platforms the package builds, and Start
// returns ErrUnsupported.
package launcher
