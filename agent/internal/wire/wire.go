// Package wire is the envelope of the agent's protocol that every part of
// it shares (the agent's API and the join protocol): an outcome as a JSON
// Status with an errcode name, mapped to and from HTTP statuses, and
// bounded JSON bodies.
package wire

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"github.com/musterkit/muster/errcode"
)

// MaxJSONBody bounds a JSON request or reply body.
const MaxJSONBody = 8 << 20

// CodeOK is the Status code of a success.
const CodeOK = "ok"

// Status is how an outcome travels: the body of an error response, the
// trailer of a streamed response and the last frame of an exec.
type Status struct {
	// Code is CodeOK or an errcode name such as "not found".
	Code     string `json:"code"`
	Message  string `json:"message,omitempty"`
	ExitCode int    `json:"exitCode,omitempty"`
}

func StatusOf(err error) Status {
	if err == nil {
		return Status{Code: CodeOK}
	}
	return Status{Code: errcode.Of(err).String(), Message: err.Error()}
}

// err rebuilds the error that s describes, with its errcode; nil for a success.
func (s Status) Err() error {
	if s.Code == CodeOK {
		return nil
	}
	return errcode.New(codeNamed(s.Code), "%s", s.Message)
}

// codeNamed returns the errcode whose String is name, or errcode.Unknown.
// It tries the codes in order up to the first without a name, so codes
// added to package errcode later travel too.
func codeNamed(name string) errcode.Code {
	for c := errcode.Unknown; c.String() != fmt.Sprintf("code(%d)", int(c)); c++ {
		if c.String() == name {
			return c
		}
	}
	return errcode.Unknown
}

var httpStatuses = map[errcode.Code]int{
	errcode.NotFound:           http.StatusNotFound,
	errcode.AlreadyExists:      http.StatusConflict,
	errcode.InvalidArgument:    http.StatusBadRequest,
	errcode.FailedPrecondition: http.StatusPreconditionFailed,
	errcode.Unavailable:        http.StatusServiceUnavailable,
	errcode.Unimplemented:      http.StatusNotImplemented,
	errcode.PermissionDenied:   http.StatusForbidden,
}

func httpStatus(c errcode.Code) int {
	if s, ok := httpStatuses[c]; ok {
		return s
	}
	return http.StatusInternalServerError
}

func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func WriteError(w http.ResponseWriter, err error) {
	WriteJSON(w, httpStatus(errcode.Of(err)), StatusOf(err))
}

// DecodeBody reads a JSON request body into v.
func DecodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, MaxJSONBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errcode.New(errcode.InvalidArgument, "request body: %w", err)
	}
	return nil
}

// ResponseError returns the error an unsuccessful response carries. A body
// that is no Status (from a proxy, or a server too old to know the route)
// gets the code its HTTP Status suggests.
func ResponseError(resp *http.Response) error {
	var s Status
	if err := json.NewDecoder(io.LimitReader(resp.Body, MaxJSONBody)).Decode(&s); err == nil && s.Code != "" && s.Code != CodeOK {
		return s.Err()
	}
	code := errcode.Unknown
	for c, hs := range httpStatuses {
		if hs == resp.StatusCode {
			code = c
		}
	}
	return errcode.New(code, "agent replied %s", resp.Status)
}
