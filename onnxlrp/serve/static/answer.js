// An explained generation: the prompt and the answer as tokens; hovering, focusing or clicking a token of the
// answer colours every token before it by its relevance for it (red for, blue against, as strong as the
// row's largest |relevance|), and `detail` names the strongest. Shared by `onnxlrp serve`'s page and the
// page `onnxlrp explain --prompt` writes (onnxlrp/generation_page.py inlines this file).
"use strict";
const ANSWER_POSITIVE = "220, 40, 40", ANSWER_NEGATIVE = "40, 90, 220";   // onnxlrp/text.py's colours

// data: {prompt_length, tokens: [{text, token, id}], generated: [{probability, logit, relevance_sum}],
// relevance: [new tokens][all tokens]}. Token text is only ever set as text, never parsed as HTML.
function renderAnswer(data, promptBox, answerBox, detail) {
  const P = data.prompt_length, spans = [];
  let pinned = 0;
  promptBox.textContent = ""; answerBox.textContent = ""; detail.textContent = "";
  data.tokens.forEach((token, k) => {
    const span = document.createElement("span");
    span.className = k < P ? "tok" : "tok gen";
    const text = token.text;
    span.textContent = text.trim() === "" && !text.includes("\n") ? (text || token.token || "\u2205")
      : text.replaceAll("\n", "\u21b5\n");
    if (k >= P) {
      span.dataset.t = String(k - P);
      span.tabIndex = 0;
      span.setAttribute("role", "button");
    }
    (k < P ? promptBox : answerBox).appendChild(span);
    spans.push(span);
  });
  const answer = spans.slice(P);
  const quote = (k) => {   // the token's text without the spaces around it (its name if that leaves nothing)
    const q = document.createElement("q");
    q.textContent = data.tokens[k].text.trim() || data.tokens[k].token || "\u2205";
    return q;
  };
  const number = (v) => (v >= 0 ? "+" : "\u2212") + Math.abs(v).toPrecision(3);

  function paint(t) {
    const row = data.relevance[t], k0 = P + t;
    const scale = Math.max(...row.map(Math.abs)) || 1;
    spans.forEach((span, k) => {
      const r = row[k], a = Math.min(Math.abs(r) / scale, 1);
      span.classList.toggle("chosen", k === k0);
      span.classList.toggle("later", k > k0);
      if (k < k0) {
        span.style.background = `rgba(${r >= 0 ? ANSWER_POSITIVE : ANSWER_NEGATIVE}, ${a.toFixed(3)})`;
        span.style.color = a > 0.65 ? "#fff" : "";
        span.title = `relevance ${number(r)} for the new token ${JSON.stringify(data.tokens[k0].text)}`;
      } else {
        span.style.background = ""; span.style.color = "";
        span.title = k === k0 ? "the token explained" : "comes later: not seen by this token";
      }
      if (k >= P) span.setAttribute("aria-pressed", String(k - P === pinned));
    });
    describe(t, row);
  }

  function describe(t, row) {
    const g = data.generated[t], k0 = P + t;
    detail.textContent = "";
    const head = document.createElement("p");
    head.append("New token ", quote(k0), ` (${t + 1} of ${data.generated.length}, position ${k0}): ` +
      `probability ${(100 * g.probability).toFixed(1)} %, logit ${g.logit.toFixed(3)}; ` +
      `relevance of the tokens before it: sum ${g.relevance_sum.toFixed(3)}.`);
    detail.appendChild(head);
    const order = row.slice(0, k0).map((r, k) => [r, k]);
    for (const [label, sign] of [["For it", 1], ["Against it", -1]]) {
      const ranked = order.filter(([r]) => sign * r > 0).sort((a, b) => sign * (b[0] - a[0])).slice(0, 6);
      if (!ranked.length) continue;
      const line = document.createElement("p");
      line.className = "list";
      line.append(`${label}: `);
      for (const [r, k] of ranked) {
        const item = document.createElement("span");
        item.append(quote(k), ` ${number(r)}`);
        line.appendChild(item);
      }
      detail.appendChild(line);
    }
  }

  const choose = (t) => { pinned = t; paint(t); };
  answer.forEach((span, t) => {
    span.addEventListener("mouseenter", () => paint(t));
    span.addEventListener("mouseleave", () => paint(pinned));
    span.addEventListener("focus", () => choose(t));
    span.addEventListener("click", () => choose(t));
    span.addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 }[event.key];
      if (step) {
        event.preventDefault();
        answer[Math.max(0, Math.min(answer.length - 1, t + step))].focus();
      } else if (event.key === "Enter" || event.key === " ") {
        event.preventDefault(); choose(t);
      }
    });
  });
  if (answer.length) choose(0);
}
