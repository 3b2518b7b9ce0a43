// go_reader reads request bodies the way Ollama's Go code does, for the differential tests.
//
// Standard library only. Each route's request type mirrors the fields of Ollama's own
// (api/types.go, openai/, anthropic/) that guardproxy's checks read: names, Go types and
// the Duration rule of v0.33's Duration.UnmarshalJSON. Other fields are left out: Go
// ignores them the same way for the fields that matter.
//
// Protocol (stdin -> stdout), one request after another until EOF:
//
//	in:  uint32 big-endian length + JSON {"route","content_type","target","encoding"}, uint32 length + body
//	out: one JSON line: {"ok":true,"model","cloud_model","keep_alive","caps","options","tool_types"}
//	     or {"ok":false,"error":"..."} when Ollama would refuse the body.
//
// With -lines: one JSON string per input line (a body's text), decoded with json.Unmarshal into
// one struct holding every dialect's fields; out, one JSON object per line with what Go holds
// ({"error":true} when it refuses the body). Used for the bodies the gate re-encodes.
package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"reflect"
	"strings"
	"time"
)

// Duration is api.Duration with v0.33's UnmarshalJSON.
type Duration struct{ time.Duration }

func (d *Duration) UnmarshalJSON(b []byte) (err error) {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	d.Duration = 5 * time.Minute
	switch t := v.(type) {
	case float64:
		if t < 0 {
			d.Duration = time.Duration(math.MaxInt64)
		} else {
			d.Duration = time.Duration(t * float64(time.Second))
		}
	case string:
		d.Duration, err = time.ParseDuration(t)
		if err != nil {
			return err
		}
		if d.Duration < 0 {
			d.Duration = time.Duration(math.MaxInt64)
		}
	default:
		return fmt.Errorf("Unsupported type: '%s'", reflect.TypeOf(v))
	}
	return nil
}

// Tools as each dialect types them: only "type" is read here.
type Tool struct {
	Type     string          `json:"type"`
	Function json.RawMessage `json:"function"`
}

type ThinkingConfig struct {
	Type         string `json:"type"`
	BudgetTokens int    `json:"budget_tokens,omitempty"`
}

// api.GenerateRequest, api.ChatRequest, api.EmbedRequest, api.EmbeddingRequest, api.ShowRequest.
type ollamaRequest struct {
	Model     string         `json:"model"`
	KeepAlive *Duration      `json:"keep_alive,omitempty"`
	Options   map[string]any `json:"options"`
}

type chatRequest struct {
	Model     string         `json:"model"`
	KeepAlive *Duration      `json:"keep_alive,omitempty"`
	Tools     []Tool         `json:"tools,omitempty"`
	Options   map[string]any `json:"options"`
}

type showRequest struct {
	Model string `json:"model"`
	Name  string `json:"name"`
}

// /v1/systemone (0.35+): a generation with a model and keep_alive.
type systemoneRequest struct {
	Model     string    `json:"model"`
	KeepAlive *Duration `json:"keep_alive,omitempty"`
}

// openai.ChatCompletionRequest, CompletionRequest, EmbedRequest; image requests.
type chatCompletionRequest struct {
	Model               string `json:"model"`
	MaxTokens           *int   `json:"max_tokens"`
	MaxCompletionTokens *int   `json:"max_completion_tokens"`
	Tools               []Tool `json:"tools"`
}

type completionRequest struct {
	Model     string `json:"model"`
	MaxTokens *int   `json:"max_tokens"`
}

type modelOnly struct {
	Model string `json:"model"`
}

// openai.ResponsesRequest
type responsesRequest struct {
	Model           string `json:"model"`
	MaxOutputTokens *int   `json:"max_output_tokens,omitempty"`
	Tools           []Tool `json:"tools,omitempty"`
}

// anthropic.MessagesRequest
type messagesRequest struct {
	Model     string          `json:"model"`
	MaxTokens int             `json:"max_tokens"`
	Tools     []Tool          `json:"tools,omitempty"`
	Thinking  *ThinkingConfig `json:"thinking,omitempty"`
}

type header struct {
	Route       string `json:"route"`
	ContentType string `json:"content_type"`
	Target      string `json:"target"`
}

type reading struct {
	OK         bool            `json:"ok"`
	Error      string          `json:"error,omitempty"`
	Model      string          `json:"model"`
	CloudModel *string         `json:"cloud_model"`
	KeepAlive  *int64          `json:"keep_alive"`
	Caps       map[string]*int `json:"caps"`
	Options    map[string]any  `json:"options"`
	ToolTypes  []string        `json:"tool_types"`
}

func keepAlive(d *Duration) *int64 {
	if d == nil {
		return nil
	}
	ns := int64(d.Duration)
	return &ns
}

func toolTypes(tools []Tool) []string {
	if tools == nil {
		return nil
	}
	out := make([]string, len(tools))
	for i, t := range tools {
		out[i] = t.Type
	}
	return out
}

// numPredict is Options.FromMap's reading of an int option.
func numPredict(opts map[string]any) (*int, error) {
	v, ok := opts["num_predict"]
	if !ok || v == nil {
		return nil, nil
	}
	f, ok := v.(float64)
	if !ok {
		return nil, fmt.Errorf("option %q must be of type integer", "num_predict")
	}
	n := int(int64(f))
	return &n, nil
}

// cloudModel is server/cloud_proxy.go's extractModelField: an exact map lookup of the whole body.
func cloudModel(body []byte) *string {
	var payload map[string]json.RawMessage
	if err := json.Unmarshal(body, &payload); err != nil {
		return nil
	}
	raw, ok := payload["model"]
	if !ok {
		return nil
	}
	var model string
	if err := json.Unmarshal(raw, &model); err != nil {
		return nil
	}
	model = strings.TrimSpace(model)
	if model == "" {
		return nil // extractModelField's (model, false): not a cloud request
	}
	return &model
}

// decode is gin's ShouldBindJSON: a json.Decoder reading the first value.
func decode(body []byte, v any) error {
	if len(body) == 0 {
		return io.EOF
	}
	return json.NewDecoder(bytes.NewReader(body)).Decode(v)
}

func readJSON(route string, body []byte) (r reading, err error) {
	r.Caps = map[string]*int{}
	switch route {
	case "generate", "embed", "embeddings":
		var q ollamaRequest
		if err = decode(body, &q); err != nil {
			return
		}
		r.Model, r.KeepAlive, r.Options = q.Model, keepAlive(q.KeepAlive), q.Options
		if route == "generate" {
			r.Caps["options.num_predict"], err = numPredict(q.Options)
		}
	case "chat":
		var q chatRequest
		if err = decode(body, &q); err != nil {
			return
		}
		r.Model, r.KeepAlive, r.Options, r.ToolTypes = q.Model, keepAlive(q.KeepAlive), q.Options, toolTypes(q.Tools)
		r.Caps["options.num_predict"], err = numPredict(q.Options)
	case "show":
		var q showRequest
		if err = decode(body, &q); err != nil {
			return
		}
		r.Model = q.Model
		if r.Model == "" {
			r.Model = q.Name
		}
	case "chat_completions":
		var q chatCompletionRequest
		if err = decode(body, &q); err != nil {
			return
		}
		r.Model, r.ToolTypes = q.Model, toolTypes(q.Tools)
		r.Caps["max_tokens"], r.Caps["max_completion_tokens"] = q.MaxTokens, q.MaxCompletionTokens
	case "completions":
		var q completionRequest
		if err = decode(body, &q); err != nil {
			return
		}
		r.Model = q.Model
		r.Caps["max_tokens"] = q.MaxTokens
	case "responses":
		var q responsesRequest
		if err = decode(body, &q); err != nil {
			return
		}
		r.Model, r.ToolTypes = q.Model, toolTypes(q.Tools)
		r.Caps["max_output_tokens"] = q.MaxOutputTokens
	case "messages":
		var q messagesRequest
		if err = decode(body, &q); err != nil {
			return
		}
		r.Model, r.ToolTypes = q.Model, toolTypes(q.Tools)
		maxTokens := q.MaxTokens
		r.Caps["max_tokens"] = &maxTokens
		if q.Thinking != nil {
			budget := q.Thinking.BudgetTokens
			r.Caps["thinking.budget_tokens"] = &budget
		} else {
			r.Caps["thinking.budget_tokens"] = nil
		}
	case "systemone":
		var q systemoneRequest
		if err = decode(body, &q); err != nil {
			return
		}
		r.Model, r.KeepAlive = q.Model, keepAlive(q.KeepAlive)
	case "v1_embeddings", "image_generations", "image_edits":
		var q modelOnly
		if err = decode(body, &q); err != nil {
			return
		}
		r.Model = q.Model
	default:
		err = fmt.Errorf("route %q is not mirrored", route)
		return
	}
	r.CloudModel = cloudModel(body)
	return
}

// readForm is TranscriptionMiddleware: ParseMultipartForm(25 MiB), then FormValue("model").
func readForm(h header, body []byte) (r reading, err error) {
	req, err := http.NewRequest("POST", "http://localhost"+h.Target, bytes.NewReader(body))
	if err != nil {
		return
	}
	req.Header.Set("Content-Type", h.ContentType)
	if err = req.ParseMultipartForm(25 << 20); err != nil {
		return
	}
	r.Model = req.FormValue("model")
	r.Caps = map[string]*int{}
	return
}

// allFields holds the fields of every dialect that the gate may rewrite.
type allFields struct {
	Model               string          `json:"model"`
	Name                string          `json:"name"`
	Options             map[string]any  `json:"options"`
	MaxTokens           *int            `json:"max_tokens"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	MaxOutputTokens     *int            `json:"max_output_tokens"`
	Thinking            *ThinkingConfig `json:"thinking"`
	Tools               []struct {
		Type string `json:"type"`
		Name string `json:"name"`
	} `json:"tools"`
}

func linesMode() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<26)
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	for in.Scan() {
		var text string
		if err := json.Unmarshal(in.Bytes(), &text); err != nil {
			fmt.Fprintln(os.Stderr, "bad input line:", err)
			os.Exit(2)
		}
		var r allFields
		if err := json.Unmarshal([]byte(text), &r); err != nil {
			fmt.Fprintln(out, `{"error":true}`)
			continue
		}
		var budget any
		if r.Thinking != nil {
			budget = r.Thinking.BudgetTokens
		}
		line, _ := json.Marshal(map[string]any{
			"model": r.Model, "name": r.Name, "options": r.Options, "max_tokens": r.MaxTokens,
			"max_completion_tokens": r.MaxCompletionTokens, "max_output_tokens": r.MaxOutputTokens,
			"budget_tokens": budget, "tools": r.Tools,
		})
		fmt.Fprintln(out, string(line))
	}
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-lines" {
		linesMode()
		return
	}
	in := bufio.NewReaderSize(os.Stdin, 1<<20)
	out := bufio.NewWriter(os.Stdout)
	enc := json.NewEncoder(out)
	next := func() ([]byte, error) {
		var n uint32
		if err := binary.Read(in, binary.BigEndian, &n); err != nil {
			return nil, err
		}
		buf := make([]byte, n)
		_, err := io.ReadFull(in, buf)
		return buf, err
	}
	for {
		rawHeader, err := next()
		if err == io.EOF {
			break
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "go_reader:", err)
			os.Exit(2)
		}
		body, err := next()
		if err != nil {
			fmt.Fprintln(os.Stderr, "go_reader:", err)
			os.Exit(2)
		}
		var h header
		if err := json.Unmarshal(rawHeader, &h); err != nil {
			fmt.Fprintln(os.Stderr, "go_reader: header:", err)
			os.Exit(2)
		}
		var r reading
		if h.Route == "transcriptions" {
			r, err = readForm(h, body)
		} else {
			r, err = readJSON(h.Route, body)
		}
		if err != nil {
			r = reading{Error: err.Error()}
		} else {
			r.OK = true
		}
		if err := enc.Encode(r); err != nil {
			fmt.Fprintln(os.Stderr, "go_reader: encode:", err)
			os.Exit(2)
		}
		if in.Buffered() == 0 {
			out.Flush()
		}
	}
	out.Flush()
}
