package gateway

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Error is an error etcd returned: its gRPC status code and message.
// errors.Is matches it against the sentinels by message, the way etcd's
// own client tells its errors apart.
type Error struct {
	Code    int    // the gRPC status code (0 for the sentinels)
	Message string // etcd's description, "etcdserver: ..."
}

func (e *Error) Error() string { return e.Message }

// Is reports whether target is an *Error with e's message.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Message == e.Message
}

// The errors of etcd's that callers branch on.
var (
	ErrCompacted        = &Error{Message: "etcdserver: mvcc: required revision has been compacted"}
	ErrFutureRev        = &Error{Message: "etcdserver: mvcc: required revision is a future revision"}
	ErrAuthFailed       = &Error{Message: "etcdserver: authentication failed, invalid user ID or password"}
	ErrAuthNotEnabled   = &Error{Message: "etcdserver: authentication is not enabled"}
	ErrInvalidAuthToken = &Error{Message: "etcdserver: invalid auth token"}
	ErrUserEmpty        = &Error{Message: "etcdserver: user name is empty"}
	ErrPermissionDenied = &Error{Message: "etcdserver: permission denied"}
	ErrLeaseNotFound    = &Error{Message: "etcdserver: requested lease not found"}
	ErrNoLeader         = &Error{Message: "etcdserver: no leader"}
)

// readError is the *Error of an answer other than 200, whose body is
// grpc-gateway's {"error", "message", "code"}.
func readError(resp *http.Response) error {
	defer drain(resp.Body)
	var body struct {
		Error   string `json:"error"`
		Message string `json:"message"`
		Code    int    `json:"code"`
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	switch {
	case json.Unmarshal(b, &body) == nil && (body.Message != "" || body.Error != ""):
		if body.Message == "" {
			body.Message = body.Error
		}
		return &Error{Code: body.Code, Message: body.Message}
	case resp.StatusCode == http.StatusNotFound:
		return &Error{Code: codeUnimplemented, Message: fmt.Sprintf("etcd gateway: %s answers %s to %s: no etcd v3 JSON gateway there "+
			"(etcd 3.4 and later serve it on the client port, unless started with --enable-grpc-gateway=false)",
			resp.Request.URL.Host, resp.Status, resp.Request.URL.Path)}
	}
	return &Error{Code: codeOf(resp.StatusCode), Message: fmt.Sprintf("etcd gateway: %s: %q", resp.Status, b)}
}

// messageError is the *Error of a message etcd wrote as text, as a
// gRPC status ("rpc error: code = ... desc = MESSAGE") or bare.
func messageError(code int, msg string) *Error {
	if _, desc, ok := strings.Cut(msg, " desc = "); ok && strings.HasPrefix(msg, "rpc error: ") {
		msg = desc
	}
	return &Error{Code: code, Message: msg}
}

// streamError is the error grpc-gateway writes into a stream.
type streamError struct {
	GRPCCode   int    `json:"grpc_code"`
	HTTPStatus string `json:"http_status"`
	Message    string `json:"message"`
}

func (s *streamError) err() error {
	if s.Message == "" {
		return &Error{Code: s.GRPCCode, Message: "etcd gateway: stream: " + s.HTTPStatus}
	}
	return messageError(s.GRPCCode, s.Message)
}

// The gRPC codes of a server that cannot serve now.
const (
	codeCanceled         = 1 // the gateway's connection to etcd closing: etcd stops
	codeDeadlineExceeded = 4
	codeUnimplemented    = 12
	codeUnavailable      = 14
)

// transient reports whether e is etcd unable to serve now (stopping,
// restarting, without a leader), not a refusal: a watch is made again.
func (e *Error) transient() bool {
	switch e.Code {
	case codeCanceled, codeDeadlineExceeded, codeUnavailable:
		return true
	}
	return false
}

// codeOf is the gRPC code of an HTTP status without a body that says.
func codeOf(status int) int {
	switch status {
	case http.StatusUnauthorized:
		return 16 // Unauthenticated
	case http.StatusForbidden:
		return 7 // PermissionDenied
	case http.StatusServiceUnavailable:
		return codeUnavailable
	}
	return 2 // Unknown
}
