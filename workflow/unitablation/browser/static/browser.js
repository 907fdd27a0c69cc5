"use strict";
// The unit browser's page logic: choose a (model, layer, basis), sort and filter its units,
// open a unit's card, or a class's view. Data scripts call unitBrowser.register(data) once
// loaded; every figure in them was drawn by the pipeline, the page only places it.
(function () {
  const manifest = JSON.parse(document.getElementById("manifest").textContent);
  const loaded = new Map();
  const pending = new Map();
  const $ = (id) => document.getElementById(id);
  const keyOf = (model, layer, basis) => [model, layer, basis].join("\u0000");
  const state = {
    model: null, layer: null, basis: null, view: "units",
    sortColumn: null, sortDescending: true,
    detectorsOnly: false, hurtClass: "", category: "",
    unit: null, className: null,
  };

  window.unitBrowser = {
    state: state,
    register(data) {
      const key = keyOf(data.model, data.layer, data.basis);
      loaded.set(key, data);
      const waiting = pending.get(key);
      if (waiting) { pending.delete(key); waiting.resolve(data); }
    },
    current: () => loaded.get(keyOf(state.model, state.layer, state.basis)),
    shownUnits: () => shownRows().map((row) => Number(row[0])),
    ready: null,
  };

  function entryOf(model, layer, basis) {
    return manifest.entries.find((e) => e.model === model && e.layer === layer && e.basis === basis);
  }

  function load(entry) {
    const key = keyOf(entry.model, entry.layer, entry.basis);
    if (loaded.has(key)) return Promise.resolve(loaded.get(key));
    if (pending.has(key)) return pending.get(key).promise;
    let resolve, reject;
    const promise = new Promise((yes, no) => { resolve = yes; reject = no; });
    pending.set(key, { promise, resolve, reject });
    const tag = document.createElement("script");
    tag.src = entry.script;
    tag.onerror = () => reject(new Error("cannot load " + entry.script));
    document.head.appendChild(tag);
    return promise;
  }

  const unique = (values) => Array.from(new Set(values));

  function fillSelect(select, values, chosen) {
    select.replaceChildren(...values.map((value) => new Option(value, value, false, value === chosen)));
    select.value = values.includes(chosen) ? chosen : values[0];
    return select.value;
  }

  function fillChoices() {
    const models = unique(manifest.entries.map((e) => e.model));
    state.model = fillSelect($("model"), models, state.model);
    const layers = unique(manifest.entries.filter((e) => e.model === state.model).map((e) => e.layer));
    state.layer = fillSelect($("layer"), layers, state.layer);
    const bases = unique(manifest.entries
      .filter((e) => e.model === state.model && e.layer === state.layer).map((e) => e.basis));
    state.basis = fillSelect($("basis"), bases, state.basis);
  }

  function columnIndex(data, name) {
    return data.columns.findIndex((column) => column[0] === name);
  }

  function cellNumber(text) {
    const value = Number(text);
    return text === "" || text === "NA" || Number.isNaN(value) ? null : value;
  }

  function shownRows() {
    const data = window.unitBrowser.current();
    if (!data) return [];
    const detector = columnIndex(data, "is_detector");
    const hurt = columnIndex(data, "most_hurt_class");
    const category = columnIndex(data, "concept_category");
    let rows = data.rows.filter((row) =>
      (!state.detectorsOnly || (detector >= 0 && row[detector] === "True")) &&
      (!state.hurtClass || row[hurt] === state.hurtClass) &&
      (!state.category || (category >= 0 && row[category] === state.category)));
    const sortAt = state.sortColumn === null ? -1 : columnIndex(data, state.sortColumn);
    if (sortAt >= 0) {
      const numeric = data.columns[sortAt][2];
      const sign = state.sortDescending ? -1 : 1;
      rows = rows.slice().sort((a, b) => {
        let order = 0;
        if (numeric) {
          const x = cellNumber(a[sortAt]);
          const y = cellNumber(b[sortAt]);
          if (x === null || y === null) order = (x === null) - (y === null);  // empty last
          else order = sign * (x - y);
        } else {
          order = sign * a[sortAt].localeCompare(b[sortAt]);
        }
        return order || Number(a[0]) - Number(b[0]);
      });
    }
    return rows;
  }

  function fillFilters(data) {
    const hurt = columnIndex(data, "most_hurt_class");
    const category = columnIndex(data, "concept_category");
    const options = (select, values, chosen) => {
      const any = new Option("any", "");
      select.replaceChildren(any, ...values.map((v) => new Option(v, v)));
      select.value = values.includes(chosen) ? chosen : "";
      return select.value;
    };
    state.hurtClass = options($("hurt-filter"), unique(data.rows.map((r) => r[hurt])).sort(), state.hurtClass);
    const categories = category < 0 ? [] : unique(data.rows.map((r) => r[category]).filter((c) => c)).sort();
    state.category = options($("category-filter"), categories, state.category);
    $("category-filter").disabled = category < 0;
    $("detectors-only").disabled = columnIndex(data, "is_detector") < 0;
  }

  function renderTable() {
    const data = window.unitBrowser.current();
    const head = document.querySelector("#units thead");
    const body = document.querySelector("#units tbody");
    const headRow = document.createElement("tr");
    for (const [name, title] of data.columns) {
      const th = document.createElement("th");
      th.dataset.column = name;
      th.textContent = title + (state.sortColumn === name ? (state.sortDescending ? " \u25bc" : " \u25b2") : "");
      th.title = name + " (click to sort)";
      th.addEventListener("click", () => {
        state.sortDescending = state.sortColumn === name ? !state.sortDescending : true;
        state.sortColumn = name;
        renderTable();
      });
      headRow.appendChild(th);
    }
    head.replaceChildren(headRow);
    const rows = shownRows();
    body.replaceChildren(...rows.map((row) => {
      const tr = document.createElement("tr");
      tr.dataset.unit = row[0];
      for (const cell of row) {
        const td = document.createElement("td");
        td.textContent = cell;
        tr.appendChild(td);
      }
      tr.addEventListener("click", () => openCard(Number(row[0])));
      return tr;
    }));
    $("unit-count").textContent = rows.length === data.rows.length
      ? data.rows.length + " units"
      : rows.length + " of " + data.rows.length + " units shown";
    $("unit-count").dataset.total = String(data.rows.length);
    $("unit-count").dataset.shown = String(rows.length);
  }

  function element(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, value);
    for (const child of children) node.append(child);
    return node;
  }

  function pairsTable(pairs, headers) {
    const table = element("table", { class: "pairs" });
    if (headers) table.append(element("tr", {}, ...headers.map((h) => element("th", {}, h))));
    for (const pair of pairs) table.append(element("tr", {}, ...pair.map((v) => element("td", {}, v))));
    return table;
  }

  function imageTile(image, caption, withOverlay) {
    const scale = image.width <= 64 ? 2 : 1;  // small images twice their size, pixels kept
    const stack = element("div", { class: "stack" });
    stack.style.width = image.width * scale + "px";
    stack.style.height = image.height * scale + "px";
    const picture = element("img", {
      class: "picture", src: image.src, width: image.width * scale, height: image.height * scale,
      "data-width": image.width, "data-height": image.height, alt: caption,
    });
    stack.append(picture);
    if (withOverlay) {
      stack.append(element("img", {
        class: "overlay", src: image.overlay, width: image.width * scale, height: image.height * scale,
        "data-width": image.width, "data-height": image.height, alt: "mask of " + caption,
      }));
    }
    return element("figure", {}, stack, element("figcaption", {}, caption));
  }

  function openCard(unit) {
    const data = window.unitBrowser.current();
    const card = data.cards[unit];
    state.unit = unit;
    const order = shownRows().map((row) => Number(row[0]));
    const at = order.indexOf(unit);
    const sequence = at >= 0 ? order : data.rows.map((row) => Number(row[0]));
    const here = sequence.indexOf(unit);
    const previous = sequence[(here - 1 + sequence.length) % sequence.length];
    const next = sequence[(here + 1) % sequence.length];
    const aside = $("card");
    const nav = element("div", { class: "card-nav" },
      element("button", { type: "button", id: "card-previous" }, "\u2190 unit " + previous),
      element("button", { type: "button", id: "card-next" }, "unit " + next + " \u2192"),
      element("button", { type: "button", id: "card-close" }, "close"));
    const bars = element("div", { class: "figure" });
    bars.innerHTML = card.bars;
    const concepts = element("div", { class: "tiles", id: "card-concept-images" },
      ...card.concept_images.map((image) => imageTile(
        image, "score " + image.score + ", mask " + image.mask_fraction, true)));
    const evals = element("div", { class: "tiles", id: "card-eval-images" },
      ...card.eval_images.map((image) => imageTile(
        image, image.class + ", a_u = " + image.activation, false)));
    aside.replaceChildren(
      element("h2", {}, data.model + " \u00b7 " + data.layer + " \u00b7 " + data.basis + " \u00b7 unit " + unit),
      nav,
      element("h3", {}, "five most-hurt classes (accuracy drop, pp)"), bars,
      element("h3", {}, "top concept-set images, mask outlined"),
      data.has_concepts ? concepts : element("p", {}, "no concept set for this model"),
      element("h3", {}, "top eval images by a_u(x)"), evals,
      element("h3", {}, "best concept per category"),
      card.categories.length ? pairsTable(card.categories, ["category", "concept", "IoU"])
        : element("p", {}, "no concept set for this model"),
      element("h3", {}, "attributes"), pairsTable(card.attributes));
    aside.hidden = false;
    aside.dataset.unit = String(unit);
    $("card-previous").addEventListener("click", () => openCard(previous));
    $("card-next").addEventListener("click", () => openCard(next));
    $("card-close").addEventListener("click", () => { aside.hidden = true; state.unit = null; });
  }

  function renderClasses() {
    const data = window.unitBrowser.current();
    const names = data.classes.map((c) => c.class);
    state.className = fillSelect($("class-choice"), names, state.className);
    const view = data.classes.find((c) => c.class === state.className);
    const list = element("table", { class: "pairs", id: "class-units" },
      element("tr", {}, element("th", {}, "unit"), element("th", {}, "class drop (pp)")));
    for (const [unit, drop] of view.units) {
      const row = element("tr", { "data-unit": String(unit) }, element("td", {}, String(unit)), element("td", {}, drop));
      row.addEventListener("click", () => openCard(unit));
      list.append(row);
    }
    const curve = element("div", { class: "figure", id: "class-curve" });
    if (view.curve) curve.innerHTML = view.curve;
    else curve.append(element("p", {}, "cumulative ablation is measured in the unit basis only"));
    $("class-detail").replaceChildren(
      element("h3", {}, "units whose ablation hurts " + view.class + " most"), list,
      element("h3", {}, "cumulative ablation of " + view.class + "'s top units (red) and random units (grey)"),
      curve);
  }

  function render() {
    const data = window.unitBrowser.current();
    fillFilters(data);
    $("units-view").hidden = state.view !== "units";
    $("classes-view").hidden = state.view !== "classes";
    renderTable();
    renderClasses();
    if (state.unit !== null && data.cards[state.unit]) openCard(state.unit);
    else $("card").hidden = true;
  }

  function choose() {
    fillChoices();
    const entry = entryOf(state.model, state.layer, state.basis);
    document.body.classList.add("loading");
    return load(entry).then(() => {
      document.body.classList.remove("loading");
      $("load-error").hidden = true;
      render();
    }, (error) => {  // a data script missing beside the page: say which, keep the page usable
      document.body.classList.remove("loading");
      $("load-error").textContent = String(error.message) + " (is the folder complete?)";
      $("load-error").hidden = false;
    });
  }

  for (const [id, key] of [["model", "model"], ["layer", "layer"], ["basis", "basis"]]) {
    $(id).addEventListener("change", (event) => {
      state[key] = event.target.value;
      window.unitBrowser.ready = choose();
    });
  }
  $("detectors-only").addEventListener("change", (e) => { state.detectorsOnly = e.target.checked; renderTable(); });
  $("hurt-filter").addEventListener("change", (e) => { state.hurtClass = e.target.value; renderTable(); });
  $("category-filter").addEventListener("change", (e) => { state.category = e.target.value; renderTable(); });
  $("class-choice").addEventListener("change", (e) => { state.className = e.target.value; renderClasses(); });
  $("show-units").addEventListener("click", () => { state.view = "units"; render(); });
  $("show-classes").addEventListener("click", () => { state.view = "classes"; render(); });
  window.unitBrowser.ready = choose();
})();
