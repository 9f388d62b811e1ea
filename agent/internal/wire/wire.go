// Package wire is the envelope of the agent's protocol that every part of
// it shares (the agent's API and the join protocol): an outcome as a JSON
// Status with an errcode name, mapped to and from HTTP statuses, and
// bounded JSON bodies.
package wire

import (
	"encoding/json"
	"errors"
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

// WriteError answers err as a Status, with the HTTP status its code maps
// to, or 413 Content Too Large for a body DecodeBody found over the limit.
func WriteError(w http.ResponseWriter, err error) {
	status := httpStatus(errcode.Of(err))
	if _, ok := errors.AsType[*tooLargeError](err); ok {
		status = http.StatusRequestEntityTooLarge
	}
	WriteJSON(w, status, StatusOf(err))
}

// tooLargeError is a request body over MaxJSONBody.
type tooLargeError struct{ size int64 } // the body's length if known, or 0

func (e *tooLargeError) Error() string {
	if e.size > 0 {
		return fmt.Sprintf("request body of %d bytes is over the limit of %d bytes (%d MiB)", e.size, MaxJSONBody, MaxJSONBody>>20)
	}
	return fmt.Sprintf("request body is over the limit of %d bytes (%d MiB)", MaxJSONBody, MaxJSONBody>>20)
}

// DecodeBody reads a JSON request body into v: one JSON value, with
// nothing but white space after it, of at most MaxJSONBody bytes. Every
// error has code errcode.InvalidArgument; WriteError answers one for a
// body over the limit with 413 Content Too Large.
func DecodeBody(r *http.Request, v any) error {
	if r.ContentLength > MaxJSONBody {
		return errcode.New(errcode.InvalidArgument, "%w", &tooLargeError{r.ContentLength})
	}
	// No ResponseWriter: the caller answers, through WriteError.
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, MaxJSONBody))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		// A second value or garbage after the first is refused, not ignored.
		end := dec.InputOffset()
		if _, err = dec.Token(); err == io.EOF {
			return nil
		} else if _, syntax := errors.AsType[*json.SyntaxError](err); err == nil || syntax {
			return errcode.New(errcode.InvalidArgument, "request body: data after the JSON value, which ends at byte %d", end)
		}
	}
	if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return errcode.New(errcode.InvalidArgument, "%w", &tooLargeError{})
	}
	if err == io.EOF {
		return errcode.New(errcode.InvalidArgument, "request body is empty; want a JSON value")
	}
	return errcode.New(errcode.InvalidArgument, "request body: %w", err)
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
	if resp.StatusCode == http.StatusRequestEntityTooLarge {
		code = errcode.InvalidArgument
	}
	return errcode.New(code, "agent replied %s", resp.Status)
}
