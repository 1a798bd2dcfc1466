// Package job runs the torchrun job: one node's part of a launch, the same
// command as NProcPerNode ranks, with torchrun's log layout, error files,
// summaries and root-cause file, over rounds of a rendezvous.
//
// A front (the mpspawn CLI) fills a Job (command, membership, placement,
// log and scratch directories, launcher.Options) and calls RunRounds with
// a rendezvous.Rendezvous: each round it builds the ranks' Specs from the
// rank contract (package contract), starts them with launcher.Start,
// forwards the signals the launcher receives (launcher.Group.Forward),
// publishes the node's first failure to the other nodes and restarts the
// ranks while restarts are left. The Outcome it returns gives the exit
// code, Summarize the machine-readable and text summaries, and
// WriteRootCause torch's root-cause error file.
//
// How it works: a stop the rendezvous announces cancels the round's
// context with a *rendezvous.StopError; when another node's launcher
// stopped the job for a hang or a timeout it found itself, the cause is
// wrapped in a launcher.StacksFirst so that this node's ranks' stacks are
// taken too. The core never sees the rendezvous.
package job
