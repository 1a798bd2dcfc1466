//go:build linux

package gateway

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/etcdtest"
)

func newClient(t *testing.T, cfg Config) *Client {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func keys(kvs []*KeyValue) string {
	var s []string
	for _, kv := range kvs {
		s = append(s, string(kv.Key)+"="+string(kv.Value))
	}
	return strings.Join(s, " ")
}

func TestKV(t *testing.T) {
	srv := etcdtest.Start(t)
	c := newClient(t, Config{Endpoints: []string{srv.Endpoint}})
	ctx := testCtx(t)
	var first int64
	for i, k := range []string{"/p/b", "/p/a", "/p/c", "/q"} {
		r, err := c.Put(ctx, k, "v"+strconv.Itoa(i))
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = r.Header.Revision
		}
	}
	got, err := c.Get(ctx, "/p/", WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if s := keys(got.Kvs); s != "/p/a=v1 /p/b=v0 /p/c=v2" || got.Count != 3 || got.More {
		t.Fatalf("prefix /p/: %q count %d more %v", s, got.Count, got.More)
	}
	got, err = c.Get(ctx, "/p/", WithPrefix(), WithKeysOnly(), WithLimit(2), WithSort(SortByKey, SortDescend))
	if err != nil {
		t.Fatal(err)
	}
	if s := keys(got.Kvs); s != "/p/c= /p/b=" || !got.More {
		t.Fatalf("keys only, limit 2, descending: %q more %v", s, got.More)
	}
	got, err = c.Get(ctx, "/p/", WithPrefix(), WithRev(first), WithSerializable())
	if err != nil {
		t.Fatal(err)
	}
	if s := keys(got.Kvs); s != "/p/b=v0" {
		t.Fatalf("at revision %d: %q", first, s)
	}
	if kv := got.Kvs[0]; kv.CreateRevision != first || kv.ModRevision != first || kv.Version != 1 {
		t.Fatalf("revisions of /p/b: %+v, want %d", kv, first)
	}
	if _, err := c.Get(ctx, "/p/", WithRev(first+100)); !errors.Is(err, ErrFutureRev) {
		t.Fatalf("read at a future revision: %v, want ErrFutureRev", err)
	}
	del, err := c.Delete(ctx, "/p/a", WithRange("/p/c"))
	if err != nil || del.Deleted != 2 {
		t.Fatalf("delete [/p/a, /p/c): %+v %v", del, err)
	}
	if err := c.Compact(ctx, del.Header.Revision); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, "/p/", WithPrefix(), WithRev(first)); !errors.Is(err, ErrCompacted) {
		t.Fatalf("read at a compacted revision: %v, want ErrCompacted", err)
	}
}

func TestTxn(t *testing.T) {
	srv := etcdtest.Start(t)
	c := newClient(t, Config{Endpoints: []string{srv.Endpoint}})
	ctx := testCtx(t)
	l, err := c.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	// create-if-absent on a lease; else: re-put only if on the same lease.
	create := func(lease LeaseID) (*TxnResponse, error) {
		put := OpPut("/k", "mine", WithLease(lease))
		return c.Txn(ctx).If(Compare(CreateRevision("/k"), "=", 0)).Then(put).
			Else(OpTxn([]Cmp{Compare(LeaseValue("/k"), "=", lease)}, []Op{put}, nil), OpGet("/k")).Commit()
	}
	r, err := create(l.ID)
	if err != nil || !r.Succeeded {
		t.Fatalf("create: %+v %v", r, err)
	}
	r, err = create(l.ID)
	if err != nil || r.Succeeded || !r.Responses[0].GetResponseTxn().Succeeded {
		t.Fatalf("again on the same lease: %+v %v", r, err)
	}
	if kvs := r.Responses[1].GetResponseRange().Kvs; len(kvs) != 1 || kvs[0].Lease != int64(l.ID) {
		t.Fatalf("the key's lease: %+v, want %d", kvs, l.ID)
	}
	r, err = create(l.ID + 1)
	if err != nil || r.Succeeded || r.Responses[0].GetResponseTxn().Succeeded {
		t.Fatalf("on another lease: %+v %v", r, err)
	}
	// value, and mod revision over a prefix.
	r, err = c.Txn(ctx).If(Compare(Value("/k"), "=", "mine"), Compare(ModRevision("/").WithPrefix(), "<", r.Header.Revision+1)).
		Then(OpDelete("/k")).Commit()
	if err != nil || !r.Succeeded {
		t.Fatalf("value and prefix compare: %+v %v", r, err)
	}
	if got, err := c.Get(ctx, "/k"); err != nil || len(got.Kvs) != 0 {
		t.Fatalf("/k after the delete: %+v %v", got, err)
	}
}

func TestLease(t *testing.T) {
	srv := etcdtest.Start(t)
	c := newClient(t, Config{Endpoints: []string{srv.Endpoint}})
	ctx := testCtx(t)
	l, err := c.Grant(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, "/leased", "x", WithLease(l.ID)); err != nil {
		t.Fatal(err)
	}
	kctx, kcancel := context.WithCancel(ctx)
	ka, err := c.KeepAlive(kctx, l.ID)
	if err != nil {
		t.Fatal(err)
	}
	// Four renewals span more than the 2 s TTL: the key is still there.
	for i := 0; i < 4; i++ {
		r, ok := <-ka
		if !ok || r.ID != l.ID || r.TTL < 1 {
			t.Fatalf("renewal %d: %+v open %v", i, r, ok)
		}
	}
	if got, err := c.Get(ctx, "/leased"); err != nil || len(got.Kvs) != 1 {
		t.Fatalf("the leased key after 4 renewals: %+v %v", got, err)
	}
	kcancel()
	for range ka {
	}
	// A revoked lease ends its keep-alive, and takes its key.
	l2, err := c.Grant(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	ka2, _ := c.KeepAlive(ctx, l2.ID)
	<-ka2
	if err := c.Revoke(ctx, l2.ID); err != nil {
		t.Fatal(err)
	}
	if err := c.Revoke(ctx, l2.ID); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("revoke twice: %v, want ErrLeaseNotFound", err)
	}
	for range ka2 { // closes at the first renewal after the revoke
	}
}

// TestWatch follows a prefix with filters through a restart of etcd: the
// watch resumes after the last revision it delivered, so an event is
// neither lost nor told twice.
func TestWatch(t *testing.T) {
	srv := etcdtest.Start(t)
	c := newClient(t, Config{Endpoints: []string{srv.Endpoint}})
	ctx := testCtx(t)
	w := c.Watch(WithRequireLeader(ctx), "/w/", WithPrefix(), WithCreatedNotify())
	if wr := <-w; !wr.Created || wr.Err() != nil {
		t.Fatalf("first response: %+v, want created", wr)
	}
	dels := c.Watch(ctx, "/w/", WithPrefix(), WithFilterPut())
	if _, err := c.Put(ctx, "/w/1", "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Delete(ctx, "/w/1"); err != nil {
		t.Fatal(err)
	}
	next := func(ch WatchChan) *Event {
		t.Helper()
		wr, ok := <-ch
		if !ok || wr.Err() != nil || len(wr.Events) != 1 {
			t.Fatalf("watch response: %+v open %v", wr, ok)
		}
		return wr.Events[0]
	}
	if ev := next(w); ev.Type != EventTypePut || string(ev.Kv.Key) != "/w/1" || string(ev.Kv.Value) != "a" {
		t.Fatalf("first event: %+v %+v", ev, ev.Kv)
	}
	if ev := next(w); ev.Type != EventTypeDelete {
		t.Fatalf("second event: %+v", ev)
	}
	if ev := next(dels); ev.Type != EventTypeDelete || string(ev.Kv.Key) != "/w/1" {
		t.Fatalf("deletes only: %+v", ev)
	}
	srv.Restart()
	r, err := c.Put(ctx, "/w/2", "b")
	if err != nil {
		t.Fatal(err)
	}
	if ev := next(w); string(ev.Kv.Key) != "/w/2" || ev.Kv.ModRevision != r.Header.Revision {
		t.Fatalf("after the restart: %+v, want /w/2 at %d", ev.Kv, r.Header.Revision)
	}
	// A watch from a compacted revision ends, and says so.
	if err := c.Compact(ctx, r.Header.Revision); err != nil {
		t.Fatal(err)
	}
	old := c.Watch(ctx, "/w/", WithPrefix(), WithRev(1))
	wr := <-old
	if !wr.Canceled || wr.CompactRevision != r.Header.Revision || !errors.Is(wr.Err(), ErrCompacted) {
		t.Fatalf("watch from a compacted revision: %+v (%v)", wr, wr.Err())
	}
	if _, ok := <-old; ok {
		t.Fatal("the compacted watch's channel stayed open")
	}
}

// TestAuth sets up users and roles as the host of a run does, then
// checks the refusals a node branches on.
func TestAuth(t *testing.T) {
	srv := etcdtest.Start(t)
	root := newClient(t, Config{Endpoints: []string{srv.Endpoint}})
	ctx := testCtx(t)
	// A client with credentials works while etcd's authentication is off,
	// and logs in once etcd turns it on (below).
	early := newClient(t, Config{Endpoints: []string{srv.Endpoint}, Username: "job", Password: "jobpw"})
	if _, err := early.Put(ctx, "/run/early", "1"); err != nil {
		t.Fatalf("credentials, authentication off: %v", err)
	}
	for _, step := range []func() error{
		func() error { return root.UserAdd(ctx, "root", "rootpw") },
		func() error { return root.UserGrantRole(ctx, "root", "root") },
		func() error { return root.RoleAdd(ctx, "job") },
		func() error {
			return root.RoleGrantPermission(ctx, "job", "/run/", GetPrefixRangeEnd("/run/"), PermReadWrite)
		},
		func() error { return root.RoleGrantPermission(ctx, "job", "/host", "", PermRead) },
		func() error { return root.UserAdd(ctx, "job", "jobpw") },
		func() error { return root.UserGrantRole(ctx, "job", "job") },
		func() error { return root.AuthEnable(ctx) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := root.Get(ctx, "/host"); !errors.Is(err, ErrUserEmpty) {
		t.Fatalf("a read without a login once auth is on: %v, want ErrUserEmpty", err)
	}
	bad := newClient(t, Config{Endpoints: []string{srv.Endpoint}, Username: "job", Password: "wrong"})
	if _, err := bad.Get(ctx, "/run/x"); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("a wrong password: %v, want ErrAuthFailed", err)
	}
	if _, err := early.Put(ctx, "/run/early", "2"); err != nil {
		t.Fatalf("credentials, authentication turned on since: %v", err)
	}
	job := newClient(t, Config{Endpoints: []string{srv.Endpoint}, Username: "job", Password: "jobpw"})
	if _, err := job.Put(ctx, "/run/x", "1"); err != nil {
		t.Fatal(err)
	}
	if _, err := job.Put(ctx, "/host", "forged"); !errors.Is(err, ErrPermissionDenied) {
		t.Fatalf("a write outside the role: %v, want ErrPermissionDenied", err)
	}
	w := job.Watch(ctx, "/other/", WithPrefix())
	if wr := <-w; !errors.Is(wr.Err(), ErrPermissionDenied) {
		t.Fatalf("a watch outside the role: %+v (%v), want ErrPermissionDenied", wr, wr.Err())
	}
	// A token etcd no longer knows (a restart forgets simple tokens) is
	// renewed by logging in again.
	srv.Restart()
	if got, err := job.Get(ctx, "/run/x"); err != nil || keys(got.Kvs) != "/run/x=1" {
		t.Fatalf("a read after etcd forgot the token: %+v %v", got, err)
	}
}

// TestEndpoints: a dead endpoint before a live one is skipped; with none
// live, a call ends with its context and says what it could not reach.
func TestEndpoints(t *testing.T) {
	srv := etcdtest.Start(t)
	port, err := etcdtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	dead := "127.0.0.1:" + strconv.Itoa(port)
	c := newClient(t, Config{Endpoints: []string{dead, "http://" + srv.Endpoint}})
	if _, err := c.Put(testCtx(t), "/x", "1"); err != nil {
		t.Fatalf("dead endpoint first: %v", err)
	}
	only := newClient(t, Config{Endpoints: []string{dead}})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = only.Get(ctx, "/x")
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("no live endpoint: %v, want the deadline and the refusal", err)
	}
	// An HTTP server that is not etcd's gateway.
	other := httptest.NewServer(http.NotFoundHandler())
	defer other.Close()
	notEtcd := newClient(t, Config{Endpoints: []string{other.URL}})
	if _, err := notEtcd.Get(testCtx(t), "/x"); err == nil || !strings.Contains(err.Error(), "no etcd v3 JSON gateway there") {
		t.Fatalf("an HTTP server that is not etcd: %v", err)
	}
	if _, err := New(Config{Endpoints: []string{"unix:///tmp/x"}}); err == nil {
		t.Fatal("a unix endpoint was taken")
	}
}

// TestWatchOpsOrder: the watches of one WatchOps deliver their events in
// the order etcd committed them, across the watches too (the rendezvous
// relies on it: a member's failure comes before its lease's end).
func TestWatchOpsOrder(t *testing.T) {
	srv := etcdtest.Start(t)
	c := newClient(t, Config{Endpoints: []string{srv.Endpoint}})
	ctx := testCtx(t)
	w := c.WatchOps(ctx, OpGet("/a/", WithPrefix(), WithCreatedNotify()), OpGet("/b", WithFilterDelete()), OpGet("/c/", WithPrefix()))
	if wr := <-w; !wr.Created {
		t.Fatalf("first response: %+v, want created", wr)
	}
	const n = 60
	var want []int64
	for i := 0; i < n; i++ {
		k := []string{"/a/x", "/b", "/c/y"}[i%3]
		r, err := c.Put(ctx, k, strconv.Itoa(i))
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, r.Header.Revision)
	}
	var got []int64
	for len(got) < n {
		wr, ok := <-w
		if !ok || wr.Err() != nil {
			t.Fatalf("after %d events: %+v open %v", len(got), wr, ok)
		}
		for _, ev := range wr.Events {
			got = append(got, ev.Kv.ModRevision)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("revisions as delivered:\n%v\nas written:\n%v", got, want)
	}
}
