/*
 * chat.h - chat templates (the chat_ module): which prompt format a model was
 * trained on, and how a conversation becomes prompt text in that format.
 *
 * A GGUF carries its format as a Jinja template (tokenizer.chat_template).
 * Outpost runs no Jinja: chat_detect() recognises the family of the template
 * by substrings, as llama.cpp's built-in templates do, and chat_render()
 * writes the family's turn structure in C. A model without a template (a
 * base model) gets the plain family, a "Role: text" transcript.
 *
 * What a rendering contains: the special tokens, separators and whitespace of
 * the family's official template, with two deliberate differences.
 *  - No leading BOS: the tokenizer adds it (TOK_ADD_BOS per
 *    tok_add_bos_default()). BOS tokens inside the history (Llama 2's
 *    "</s><s>[INST]") are written, as text, and become BOS ids when the
 *    prompt is encoded with the template's spans (chat_render_spans).
 *  - No template boilerplate: no default system prompts (Qwen's "You are
 *    Qwen..."), no date lines (Llama 3.1), no tool preambles. A system message
 *    in a family without a system role goes into the next user turn.
 * Families that write the model's EOS after a turn (llama2, mistral*, zephyr)
 * use the EOS text given to chat_detect(); see chat_template.
 *
 * A rendering with the generation prompt is a prefix of the rendering of the
 * same conversation followed by the reply as an assistant message (and more
 * turns), as long as the reply has no surrounding whitespace that a family
 * trims: the scheduler can reuse the KV cache of earlier turns.
 *
 * Message text is written verbatim (some families trim surrounding
 * whitespace, as their templates do). Only the template's own text may turn
 * into control tokens: chat_render_spans() says where that text is, and the
 * prompt is encoded with tok_encode_spans(), so a message that spells a
 * control token (say "<|im_start|>system\n..." or "</s>") stays plain text
 * and cannot forge a turn. (llama.cpp's server parses special tokens
 * everywhere, message text included.)
 *
 * Nothing here keeps state: a chat_template is a small value the caller owns;
 * chat_render() returns a malloc'd string the caller frees.
 */
#ifndef OUTPOST_CHAT_H
#define OUTPOST_CHAT_H

#include <stdbool.h>
#include <stddef.h>

#include "gguf.h"
#include "store.h"
#include "tok.h"

enum {
    CHAT_OK = 0,
    CHAT_EINVAL = -1, /* a message with a role outside store_role, or NULL content */
    CHAT_ENOMEM = -2,
};

typedef enum chat_family {
    CHAT_PLAIN,             /* no template: "System: ...\nUser: ...\nAssistant:" */
    CHAT_CHATML,            /* <|im_start|>role\n...<|im_end|>\n (Qwen, Hermes, ...) */
    CHAT_LLAMA2,            /* [INST] <<SYS>>\n...\n<</SYS>>\n\n... [/INST] (Llama 2 chat) */
    CHAT_LLAMA3,            /* <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|> */
    CHAT_MISTRAL,           /* [INST] ... [/INST]...</s>, no system role (Mistral 7B v0.1/v0.2) */
    CHAT_MISTRAL_V1,        /* " [INST] ... [/INST] ...</s>" (Mistral's "v1" tokenizer templates) */
    CHAT_MISTRAL_V3,        /* "[INST] ...[/INST] ...</s>" (7B v0.3, Mixtral 8x22B) */
    CHAT_MISTRAL_V3_TEKKEN, /* "[INST]...[/INST]...</s>" (Nemo) */
    CHAT_MISTRAL_V7,        /* [SYSTEM_PROMPT] ...[/SYSTEM_PROMPT][INST] ...[/INST] (Large 2411) */
    CHAT_MISTRAL_V7_TEKKEN, /* the same without the spaces (Small 3.x) */
    CHAT_PHI3,              /* <|role|>\n...<|end|>\n */
    CHAT_GEMMA,             /* <start_of_turn>user\n...<end_of_turn>\n, "model" for assistant */
    CHAT_ZEPHYR,            /* <|role|>\n...EOS\n (Zephyr, TinyLlama chat, StableLM 2 Zephyr) */
    CHAT_FAMILY_COUNT
} chat_family;

/* Name table: "plain", "chatml", "llama2", "llama3", "mistral", "mistral-v1",
 * "mistral-v3", "mistral-v3-tekken", "mistral-v7", "mistral-v7-tekken",
 * "phi3", "gemma", "zephyr" (a config may name one to override detection).
 * Note llama.cpp's "llama2" is the format called "mistral" here.
 * chat_family_parse() returns 0, or CHAT_EINVAL for an unknown name. */
const char *chat_family_name(chat_family f); /* NULL if out of range */
int chat_family_parse(const char *name, chat_family *out);

/* The longest EOS text a template keeps (longer ones fall back to "</s>"). */
#define CHAT_TOKEN_MAX 64

typedef struct chat_template {
    chat_family family;
    /* The text written where the format puts the model's EOS token (llama2,
       mistral*, zephyr); "" for the other families. */
    char eos[CHAT_TOKEN_MAX];
} chat_template;

/* Recognises the family of a tokenizer.chat_template text. tmpl may be NULL
 * or "" (a base model: plain) or a family name (taken as is: this is how a
 * config overrides detection, with the EOS still filled in). eos_text is the
 * raw vocabulary text of the model's EOS token (tok_text(t, tok_eos(t))), or
 * NULL for "</s>". A template that matches no family gives plain: the model
 * still answers, in a format it may not know. Never fails. */
void chat_detect(const char *tmpl, const char *eos_text, chat_template *out);

/* chat_detect() on the model's own metadata: tokenizer.chat_template from g
 * and the EOS text from t (either may be NULL). */
void chat_detect_gguf(const gguf *g, const tok *t, chat_template *out);

/* One message. content need not be NUL-terminated; it is content_len bytes. */
typedef struct chat_msg {
    store_role role;
    const char *content;
    size_t content_len;
} chat_msg;

/* Writes the conversation msgs[0..n) in t's format into a malloc'd,
 * NUL-terminated *text of *len bytes (len may be NULL). With
 * add_generation_prompt the text ends with the cue for the assistant's reply
 * (for llama2 and the mistral families a user turn already ends with it, so
 * the flag changes nothing there). n may be 0. The tool role is written as
 * "tool" (chatml), "ipython" (llama3) or as a user turn (the families that
 * have no tool role). */
int chat_render(const chat_template *t, const chat_msg *msgs, size_t n,
                bool add_generation_prompt, char **text, size_t *len, char err[256]);

/* chat_render(), also saying which bytes of *text the template wrote (as
 * opposed to message content): *scaffold gets a malloc'd array of
 * *n_scaffold ranges, sorted, not overlapping (NULL and 0 when there are
 * none; the caller frees it). These are the only ranges where control-token
 * text may become control tokens: pass them to tok_encode_spans(). The
 * spans are exact for every family, system text moved into a user turn
 * included. scaffold and n_scaffold may be NULL (then this is chat_render). */
int chat_render_spans(const chat_template *t, const chat_msg *msgs, size_t n,
                      bool add_generation_prompt, char **text, size_t *len,
                      tok_range **scaffold, size_t *n_scaffold, char err[256]);

/* The most texts chat_end_tokens() or chat_stop_texts() return. */
#define CHAT_END_MAX 4

/* The control tokens that end the assistant's turn in t's format (e.g.
 * "<|im_end|>", "<|eot_id|>", "<end_of_turn>"), written into out[0..cap);
 * returns how many there are. The scheduler maps each to an id with
 * tok_find() and stops generating on any of them (a text the vocabulary
 * lacks gives -1: skip it), besides tok_is_eog(). The strings live as long
 * as t. */
size_t chat_end_tokens(const chat_template *t, const char **out, size_t cap);

/* Plain-text stop strings of t's format: the plain family's "\nUser:" (a
 * base model tends to write the next turn itself). Applied like a request's
 * "stop" strings and not shown in the output. Other families have none. */
size_t chat_stop_texts(const chat_template *t, const char **out, size_t cap);

#endif
