// Reads JSON request bodies the way Ollama's handlers do (encoding/json into structs shaped like
// Ollama 0.33's: api.GenerateRequest/ChatRequest options map, openai.ChatCompletionRequest,
// openai.ResponsesRequest, anthropic.MessagesRequest) and prints what Go ends up with.
//
// Input: one JSON string per line (the body's text). Output: one JSON object per line.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
)

type thinking struct {
	Type         string `json:"type"`
	BudgetTokens int    `json:"budget_tokens,omitempty"`
}

type tool struct {
	Type string `json:"type"`
	Name string `json:"name"`
}

type request struct {
	Model               string         `json:"model"`
	Name                string         `json:"name"`
	Options             map[string]any `json:"options"`
	MaxTokens           *int           `json:"max_tokens"`
	MaxCompletionTokens *int           `json:"max_completion_tokens"`
	MaxOutputTokens     *int           `json:"max_output_tokens"`
	Thinking            *thinking      `json:"thinking"`
	Tools               []tool         `json:"tools"`
}

func main() {
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
		var r request
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
