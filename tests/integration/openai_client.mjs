// openai_client.mjs - OpenAI's own Node library (the `openai` npm package,
// version pinned in package.json) against a running outpost serve on its TCP
// listener: what a real app written for OpenAI sees.
//
// Usage: node openai_client.mjs BASE_URL API_KEY MODEL
// Prints one "ok: ..." or "FAIL: ..." line per check (test_openai_client.sh
// counts them) and exits 1 when any check failed or the client threw.
import OpenAI from 'openai';

const [baseURL, apiKey, model] = process.argv.slice(2);
if (!baseURL || !apiKey || !model) {
  console.error('usage: node openai_client.mjs BASE_URL API_KEY MODEL');
  process.exit(2);
}

let failed = 0;
function check(cond, what, detail) {
  if (cond) {
    console.log(`ok: ${what}`);
  } else {
    failed++;
    console.log(`FAIL: ${what}${detail === undefined ? '' : ': ' + JSON.stringify(detail)}`);
  }
}

// No retries: a failure must show, not be papered over.
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60_000 });
const messages = [{ role: 'user', content: 'Tell me a story about a cat' }];

async function main() {
  // The model list, as an app picks its model.
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  check(ids.includes(model), `models.list() names ${model}`, ids);

  // Non-streaming, greedy.
  const c = await client.chat.completions.create({
    model, messages, max_tokens: 32, temperature: 0,
  });
  const text = c.choices?.[0]?.message?.content ?? '';
  check(c.object === 'chat.completion' && c.choices[0].message.role === 'assistant' &&
        text.length > 0, 'chat.completions.create: a non-empty assistant reply', c);
  check(['stop', 'length'].includes(c.choices[0].finish_reason),
        `finish_reason ${c.choices[0].finish_reason}`, c.choices[0]);
  check(c.usage?.prompt_tokens > 0 && c.usage?.completion_tokens > 0 &&
        c.usage.total_tokens === c.usage.prompt_tokens + c.usage.completion_tokens,
        `usage: ${c.usage?.prompt_tokens} prompt + ${c.usage?.completion_tokens} completion tokens`,
        c.usage);
  // Extra fields ride through the library untouched.
  check(c.outpost && c.outpost.route === 'local' && typeof c.outpost.reason === 'string' &&
        c.outpost.reason.length > 0 && c.outpost.ttft_ms > 0,
        `the outpost object: route ${c.outpost?.route}, reason ${c.outpost?.reason}`, c.outpost);
  console.log(`# reply: ${JSON.stringify(text)}`);

  // Streaming, the same greedy request: the deltas add up to the same text,
  // the last choice chunk carries the finish reason and the outpost object,
  // the usage chunk comes last, and the iterator ends (the library stops on
  // "data: [DONE]").
  const stream = await client.chat.completions.create({
    model, messages, max_tokens: 32, temperature: 0, stream: true,
    stream_options: { include_usage: true },
  });
  let streamed = '', chunks = 0, finish = null, outpost = null, usage = null, role = null;
  let badChunk = null;
  for await (const ch of stream) {
    chunks++;
    if (ch.object !== 'chat.completion.chunk' || ch.id !== undefined && !ch.id.startsWith('chatcmpl-'))
      badChunk = ch;
    if (ch.usage) usage = ch.usage;
    if (ch.outpost) outpost = ch.outpost;
    const choice = ch.choices?.[0];
    if (!choice) continue;
    if (choice.delta?.role) role ??= choice.delta.role;
    if (choice.delta?.content) streamed += choice.delta.content;
    if (choice.finish_reason) finish = choice.finish_reason;
  }
  check(badChunk === null, `${chunks} chunks, each a chat.completion.chunk`, badChunk);
  check(role === 'assistant', 'the first delta names the assistant role', role);
  check(streamed.length > 0 && streamed === text,
        'streamed deltas concatenate to the non-streamed greedy reply', { streamed, text });
  check(['stop', 'length'].includes(finish), `stream finish_reason ${finish}`);
  check(outpost && outpost.route === 'local', 'the stream carries the outpost object', outpost);
  check(usage && usage.prompt_tokens === c.usage.prompt_tokens &&
        usage.completion_tokens === c.usage.completion_tokens,
        'stream usage chunk equals the non-streamed usage', usage);

  // The legacy completions route through the same library.
  const t = await client.completions.create({
    model, prompt: 'Once upon a time', max_tokens: 16, temperature: 0,
  });
  check(t.object === 'text_completion' && t.choices[0].text.length > 0 && t.usage.completion_tokens > 0,
        'completions.create: non-empty text and usage', t);

  // A wrong key: the library's own AuthenticationError, status 401.
  const wrong = new OpenAI({ baseURL, apiKey: apiKey + '-wrong', maxRetries: 0 });
  let err = null;
  try {
    await wrong.chat.completions.create({ model, messages, max_tokens: 4 });
  } catch (e) {
    err = e;
  }
  check(err instanceof OpenAI.AuthenticationError && err.status === 401,
        `a wrong key raises AuthenticationError (${err?.constructor?.name} ${err?.status})`,
        err && String(err));
  // An unknown model: NotFoundError (404) with OpenAI's error code.
  err = null;
  try {
    await client.chat.completions.create({ model: 'no-such-model', messages, max_tokens: 4 });
  } catch (e) {
    err = e;
  }
  check(err instanceof OpenAI.NotFoundError && err.status === 404 && err.code === 'model_not_found',
        `an unknown model raises NotFoundError (${err?.constructor?.name} ${err?.status} ${err?.code})`,
        err && String(err));
}

try {
  await main();
} catch (e) {
  failed++;
  console.log(`FAIL: the client threw: ${e?.constructor?.name}: ${e?.message}`);
}
process.exit(failed ? 1 : 0);
