package main

import (
	"context"
	"fmt"
	"os"

	"github.com/mpspawn/mpspawn/launcher/live"
	"github.com/mpspawn/mpspawn/rendezvous/etcd"
	"github.com/urfave/cli/v2"
)

// mpspawn status and top on a machine outside the job: given the run's
// --rdzv-endpoint and --rdzv-id, they read every node's summary (its
// status record in etcd, on its lease) instead of a local state file.

// remoteFlags are status's and top's flags for reading a job through its
// rendezvous, as its nodes were given them.
func remoteFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: fRdzvEndpoint, Usage: "read the job's nodes from its etcd at `HOST:PORT[,...]` (any machine that reaches it)"},
		&cli.StringFlag{Name: fRdzvID, Usage: "the run's `ID`, with --rdzv-endpoint"},
		&cli.StringFlag{Name: fRdzvBackend, Value: "etcd", Usage: "`BACKEND` the job uses: etcd or c10d"},
		&cli.StringFlag{Name: fRdzvConf, Usage: "the job's --rdzv-conf `K=V,...`: connect_timeout, cacert, cert, key, token (c10d; or $MPSPAWN_RDZV_TOKEN); others are ignored"},
	}
}

// jobSource reads a job's states, one per node.
type jobSource func(ctx context.Context) ([]*live.State, error)

// sourceOf is where status or top reads the job that c names: the
// rendezvous with --rdzv-endpoint, else this machine's state files
// (findJob of arg, a pid or run id).
func sourceOf(c *cli.Context, arg string) (jobSource, error) {
	if !c.IsSet(fRdzvEndpoint) {
		return func(context.Context) ([]*live.State, error) { return findJob(arg) }, nil
	}
	ec, err := remoteConfig(c)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) ([]*live.State, error) { return readRemote(ctx, ec) }, nil
}

// checkRemoteFlags refuses a rendezvous flag without --rdzv-endpoint.
func checkRemoteFlags(c *cli.Context) error {
	if c.IsSet(fRdzvEndpoint) {
		return nil
	}
	for _, f := range []string{fRdzvID, fRdzvBackend, fRdzvConf} {
		if c.IsSet(f) {
			return usagef("%s: --%s goes with --rdzv-endpoint", c.Command.Name, f)
		}
	}
	return nil
}

// remoteConfig validates the rendezvous flags into an etcd client's
// configuration, as a node of the job builds it (clientSetup, etcdClient).
func remoteConfig(c *cli.Context) (etcd.Config, error) {
	id, arg := c.String(fRdzvID), c.Args().First()
	switch {
	case id == "" && arg == "":
		return etcd.Config{}, usagef("%s --rdzv-endpoint: give the run id (--rdzv-id ID)", c.Command.Name)
	case id == "":
		id = arg
	case arg != "" && arg != id:
		return etcd.Config{}, usagef("%s: run id %q and --rdzv-id %s differ: give one of them", c.Command.Name, arg, id)
	}
	cfg := &config{runID: id}
	m := &cfg.multi
	m.backend = c.String(fRdzvBackend)
	if m.backend != "etcd" && m.backend != "c10d" {
		return etcd.Config{}, usagef("--rdzv-backend %q: want etcd or c10d", m.backend)
	}
	var err error
	if m.conf, err = parseRdzvConf(c.String(fRdzvConf)); err != nil {
		return etcd.Config{}, err
	}
	if err := m.checkToken(); err != nil {
		return etcd.Config{}, err
	}
	if err := m.clientSetup(c.String(fRdzvEndpoint)); err != nil {
		return etcd.Config{}, err
	}
	return cfg.etcdClient(), nil
}

// readRemote reads the nodes of run ec.RunID from its rendezvous,
// bounded by connect_timeout: every node's summary, and a Gone state for
// a node that stopped publishing. A run with no summary is an error.
func readRemote(ctx context.Context, ec etcd.Config) ([]*live.State, error) {
	recs, err := etcd.ReadStatus(ctx, ec)
	if err != nil {
		return nil, err
	}
	nodes, bad := live.Nodes(recs, ec.RunID)
	if bad > 0 {
		fmt.Fprintf(os.Stderr, "mpspawn: warning: %d status records of run %s did not verify; left out\n", bad, ec.RunID)
	}
	if len(nodes) == 0 {
		return nil, usagef("status: no node of run %s publishes its ranks at %s (the id is wrong, the run has not started its ranks, or it has ended)", ec.RunID, ec.Endpoints[0])
	}
	sts := make([]*live.State, len(nodes))
	for i := range nodes {
		sts[i] = &nodes[i]
	}
	return sts, nil
}
