package etcd

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mpspawn/mpspawn/rendezvous/etcd/internal/gateway"
)

// JobUser is the etcd user that the nodes of a run with a token log in
// as; its password is derived from the token and the run id (Password).
const JobUser = "mpspawn"

// Password is the password of user for run runID with token: an HMAC of
// the two, so that the token itself never reaches etcd.
func Password(token, runID, user string) string {
	return mac(token, "mpspawn etcd password\x00"+user+"\x00"+runID)
}

func mac(token, msg string) string {
	h := hmac.New(sha256.New, []byte(token))
	h.Write([]byte(msg))
	return hex.EncodeToString(h.Sum(nil))
}

// ServerCheck is how a node knows that the etcd server it reaches is its
// run's: the node that hosts the server writes Value at Key, and only it
// does (with a token, Value is bound to it, and only the server's root
// may write Key).
type ServerCheck struct {
	Key, Value string
}

// HostRecord is the ServerCheck of a run's hosted server (prefix as
// Config.Prefix; token may be empty).
func HostRecord(prefix, runID, token string) ServerCheck {
	if prefix == "" {
		prefix = "/mpspawn/"
	}
	v := "mpspawn c10d host of run " + runID
	if token != "" {
		v = mac(token, "mpspawn c10d host\x00"+runID)
	}
	return ServerCheck{Key: prefix + runID + ".host", Value: v}
}

// ServerError is an etcd server that is not this run's: it refused the
// token, or does not hold the host's record.
type ServerError struct {
	Endpoints []string
	Reason    string
}

func (e *ServerError) Error() string {
	return fmt.Sprintf("rendezvous: etcd at %s is not this run's server: %s", strings.Join(e.Endpoints, ","), e.Reason)
}

// clientConfig is the etcd client configuration of cfg.
func clientConfig(cfg *Config) gateway.Config {
	return gateway.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: cfg.ConnectTimeout,
		TLS:         cfg.TLS,
		Username:    cfg.Username,
		Password:    cfg.Password,
	}
}

// waitServer waits, bounded by ConnectTimeout, until the server holds
// cfg.Server's record: the host writes it once the server is set up. A
// server that refuses the credentials, holds another record or none
// within the bound is a *ServerError; one that does not answer is a
// *ConnectError.
func waitServer(ctx context.Context, cfg *Config) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	var last error
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, 200*time.Millisecond) {
		found, err := readRecord(ctx, cfg)
		switch {
		case errors.Is(err, gateway.ErrAuthFailed):
			return &ServerError{Endpoints: cfg.Endpoints, Reason: "it refused this node's token (the nodes' tokens differ, or another server holds the port)"}
		case err == nil && found != nil && *found == cfg.Server.Value:
			return nil
		case err == nil && found != nil:
			return &ServerError{Endpoints: cfg.Endpoints, Reason: "it holds another run's host record (another job's server, or the nodes' tokens differ)"}
		}
		last = err
		select {
		case <-ctx.Done():
			if last == nil || errors.Is(last, gateway.ErrPermissionDenied) {
				return &ServerError{Endpoints: cfg.Endpoints, Reason: fmt.Sprintf("no record of this run's host within %v (connect_timeout): something else serves the port", cfg.ConnectTimeout)}
			}
			return &ConnectError{Endpoints: cfg.Endpoints, Timeout: cfg.ConnectTimeout, Err: last}
		case <-time.After(wait):
		}
	}
}

// readRecord reads cfg.Server's key with a client of its own (one made
// before the host turned authentication on has no token: it is made
// again each time). found is nil when the key is not there.
func readRecord(ctx context.Context, cfg *Config) (found *string, err error) {
	cli, err := gateway.New(clientConfig(cfg))
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	resp, err := cli.Get(ctx, cfg.Server.Key)
	if err != nil || len(resp.Kvs) == 0 {
		return nil, err
	}
	v := string(resp.Kvs[0].Value)
	return &v, nil
}

// PrepareServer sets up a freshly started etcd server at endpoint for
// run runID, as the node that hosts it: with a token, users root and
// JobUser (passwords from Password), JobUser allowed the run's keys
// alone, and authentication on; then the host record (HostRecord), which
// the nodes wait for before they join.
func PrepareServer(ctx context.Context, endpoint string, tc *tls.Config, prefix, runID, token string) error {
	cfg := Config{Endpoints: []string{endpoint}, TLS: tc, ConnectTimeout: DefaultConnectTimeout}
	cli, err := gateway.New(clientConfig(&cfg))
	if err != nil {
		return fmt.Errorf("rendezvous: prepare etcd server: %w", err)
	}
	defer cli.Close()
	rec := HostRecord(prefix, runID, token)
	if token == "" {
		if _, err := cli.Put(ctx, rec.Key, rec.Value); err != nil {
			return fmt.Errorf("rendezvous: prepare etcd server: %w", err)
		}
		return nil
	}
	if err := enableAuth(ctx, cli, rec.Key, strings.TrimSuffix(rec.Key, ".host")+"/", runID, token); err != nil {
		return fmt.Errorf("rendezvous: prepare etcd server: %w", err)
	}
	cfg.Username, cfg.Password = "root", Password(token, runID, "root")
	root, err := gateway.New(clientConfig(&cfg))
	if err != nil {
		return fmt.Errorf("rendezvous: prepare etcd server: %w", err)
	}
	defer root.Close()
	if _, err := root.Put(ctx, rec.Key, rec.Value); err != nil {
		return fmt.Errorf("rendezvous: prepare etcd server: %w", err)
	}
	return nil
}

// enableAuth makes users root and JobUser (read of hostKey, read and
// write of the run's keys under runPrefix) and turns authentication on.
func enableAuth(ctx context.Context, cli *gateway.Client, hostKey, runPrefix, runID, token string) error {
	steps := []func() error{
		func() error { return cli.UserAdd(ctx, "root", Password(token, runID, "root")) },
		func() error { return cli.UserGrantRole(ctx, "root", "root") },
		func() error { return cli.RoleAdd(ctx, JobUser) },
		func() error {
			return cli.RoleGrantPermission(ctx, JobUser, runPrefix, gateway.GetPrefixRangeEnd(runPrefix), gateway.PermReadWrite)
		},
		func() error { return cli.RoleGrantPermission(ctx, JobUser, hostKey, "", gateway.PermRead) },
		func() error { return cli.UserAdd(ctx, JobUser, Password(token, runID, JobUser)) },
		func() error { return cli.UserGrantRole(ctx, JobUser, JobUser) },
		func() error { return cli.AuthEnable(ctx) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	return nil
}
