package wire

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/musterkit/muster/errcode"
)

type spec struct {
	Name  string `json:"name"`
	Image string `json:"image"`
}

// post returns a request whose body is body; with chunked set, its
// length is unknown, as for a streamed HTTP/2 body.
func post(body string, chunked bool) *http.Request {
	var r io.Reader = strings.NewReader(body)
	if chunked {
		r = io.MultiReader(r) // hides the length from httptest
	}
	return httptest.NewRequest(http.MethodPost, "/v1/containers", r)
}

func TestDecodeBodyRefusesTrailingData(t *testing.T) {
	for _, body := range []string{
		`{"name":"tg1","image":"base"} GARBAGE{{{`,
		`{"name":"tg1","image":"base"}{"name":"tg2","image":"base"}`,
		`{"name":"tg1","image":"base"} 1`,
		`{"name":"tg1","image":"base"}]`,
	} {
		var v spec
		err := DecodeBody(post(body, false), &v)
		if errcode.Of(err) != errcode.InvalidArgument || !strings.Contains(err.Error(), "data after the JSON value, which ends at byte 29") {
			t.Errorf("%s: got %v, want InvalidArgument for data after the value", body, err)
		}
	}
	for _, body := range []string{`{"name":"tg1","image":"base"}`, "{\"name\":\"tg1\",\"image\":\"base\"}\n", " {\"name\":\"tg1\",\"image\":\"base\"} \r\n\t "} {
		var v spec
		if err := DecodeBody(post(body, false), &v); err != nil || v.Name != "tg1" {
			t.Errorf("%q: got %+v, %v; want it decoded", body, v, err)
		}
	}
	var v spec
	if err := DecodeBody(post("", false), &v); errcode.Of(err) != errcode.InvalidArgument || !strings.Contains(err.Error(), "empty") {
		t.Errorf("empty body: got %v, want InvalidArgument saying it is empty", err)
	}
}

func TestDecodeBodyOverLimitIs413(t *testing.T) {
	// A JSON value whose end lies past the limit, with and without a
	// declared length.
	big := `{"name":"` + strings.Repeat("a", MaxJSONBody) + `","image":"base"}`
	for _, chunked := range []bool{false, true} {
		var v spec
		err := DecodeBody(post(big, chunked), &v)
		if errcode.Of(err) != errcode.InvalidArgument || !strings.Contains(err.Error(), "over the limit of 8388608 bytes (8 MiB)") {
			t.Fatalf("chunked %v: got %v, want InvalidArgument naming the limit", chunked, err)
		}
		rec := httptest.NewRecorder()
		WriteError(rec, err)
		if rec.Code != http.StatusRequestEntityTooLarge {
			t.Errorf("chunked %v: WriteError answered %d, want 413", chunked, rec.Code)
		}
		var st Status
		if err := json.NewDecoder(rec.Body).Decode(&st); err != nil || st.Code != "invalid argument" || !strings.Contains(st.Message, "over the limit") {
			t.Errorf("chunked %v: the 413's body is %+v (%v), want an invalid-argument Status naming the limit", chunked, st, err)
		}
		resp := rec.Result()
		resp.Body = io.NopCloser(bytes.NewReader(mustJSON(t, st)))
		if err := ResponseError(resp); errcode.Of(err) != errcode.InvalidArgument || !strings.Contains(err.Error(), "over the limit") {
			t.Errorf("chunked %v: the client reads %v", chunked, err)
		}
	}
	// Exactly at the limit passes.
	exact := `{"name":"` + strings.Repeat("a", MaxJSONBody-len(`{"name":"","image":"b"}`)) + `","image":"b"}`
	var v spec
	if err := DecodeBody(post(exact, true), &v); err != nil {
		t.Fatalf("a body of exactly %d bytes: %v", len(exact), err)
	}
	// A proxy's 413 without a Status is InvalidArgument too.
	resp := &http.Response{StatusCode: http.StatusRequestEntityTooLarge, Status: "413 Request Entity Too Large", Body: io.NopCloser(strings.NewReader("<html>"))}
	if err := ResponseError(resp); errcode.Of(err) != errcode.InvalidArgument {
		t.Errorf("a bare 413: got %v, want InvalidArgument", err)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
