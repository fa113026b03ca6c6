/* kashforce dashboard: the few lines htmx does not cover. No build step. */
(function () {
  "use strict";

  var PALETTE = ["#0b5cab", "#1b7f3b", "#9a6100", "#6b3fa0", "#b42318", "#00707a", "#5b6775", "#c2410c"];

  function shorten(text, length) {
    return text.length > length ? text.slice(0, length - 1) + "…" : text;
  }

  function drawCharts() {
    var source = document.getElementById("chart-data");
    if (!source || typeof Chart === "undefined") return;
    var data = JSON.parse(source.textContent);
    Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
    Chart.defaults.color = "#1d2733";
    Chart.defaults.animation = false;

    var synced = document.getElementById("chart-synced");
    if (synced) {
      new Chart(synced, {
        type: "bar",
        data: {
          labels: data.synced.labels,
          datasets: data.synced.series.map(function (s, i) {
            return { label: s.label, data: s.data, backgroundColor: PALETTE[i % PALETTE.length] };
          })
        },
        options: {
          maintainAspectRatio: false,
          scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } } },
          plugins: { legend: { position: "bottom" } }
        }
      });
      synced.dataset.drawn = "true";
    }

    var causes = document.getElementById("chart-causes");
    if (causes) {
      new Chart(causes, {
        type: "bar",
        data: { labels: data.causes.labels, datasets: [{ label: "Records", data: data.causes.data, backgroundColor: "#b42318" }] },
        options: {
          indexAxis: "y", maintainAspectRatio: false,
          scales: {
            x: { beginAtZero: true, ticks: { precision: 0 } },
            // Long causes are cut on the axis; the tooltip and the list below have them whole.
            y: { ticks: { callback: function (value) { return shorten(this.getLabelForValue(value), 28); } } }
          },
          plugins: { legend: { display: false } }
        }
      });
      causes.dataset.drawn = "true";
    }

    var api = document.getElementById("chart-api");
    if (api && data.api.length) {
      new Chart(api, {
        type: "bar",
        data: {
          labels: data.api.map(function (c) { return c.label; }),
          datasets: [
            { label: "Used", data: data.api.map(function (c) { return c.used; }), backgroundColor: "#0b5cab" },
            { label: "Left today", data: data.api.map(function (c) { return Math.max(0, c.limit - c.used); }), backgroundColor: "#d8dee6" }
          ]
        },
        options: {
          indexAxis: "y", maintainAspectRatio: false,
          scales: { x: { stacked: true, beginAtZero: true }, y: { stacked: true } },
          plugins: { legend: { position: "bottom" } }
        }
      });
      api.dataset.drawn = "true";
    }
  }

  // "Select all on this page" in the error queue.
  document.addEventListener("change", function (event) {
    var name = event.target.getAttribute("data-select-all");
    if (!name) return;
    document.querySelectorAll('input[type=checkbox][name="' + name + '"]').forEach(function (box) {
      box.checked = event.target.checked;
    });
  });

  // "Add a row" in the mapping editor: copy the formset's empty form, count it in TOTAL_FORMS.
  document.addEventListener("click", function (event) {
    var prefix = event.target.getAttribute("data-add-row");
    if (!prefix) return;
    var total = document.getElementById("id_" + prefix + "-TOTAL_FORMS");
    var index = parseInt(total.value, 10);
    var html = document.getElementById("mapping-row-template").innerHTML
      .replace(/__prefix__/g, index).replace(/__num__/g, index + 1);
    document.getElementById("mapping-rows").insertAdjacentHTML("beforeend", html);
    total.value = index + 1;
    document.getElementById("id_" + prefix + "-" + index + "-source_path").focus();
  });

  // At phone width the tables become stacked cards (kashforce.css): each cell is labelled with
  // its column's heading, so a card reads "Record: …", "Why: …". Done again after htmx swaps.
  function labelCells(root) {
    (root || document).querySelectorAll("table.table").forEach(function (table) {
      var headings = Array.prototype.map.call(table.querySelectorAll("thead th"), function (th) {
        return th.textContent.trim();
      });
      if (!headings.length) return;
      table.querySelectorAll("tbody tr").forEach(function (row) {
        var column = 0;
        Array.prototype.forEach.call(row.children, function (cell) {
          var heading = headings[column] || "";
          if (heading && !cell.hasAttribute("data-label")) cell.setAttribute("data-label", heading);
          column += cell.colSpan || 1;
        });
      });
    });
  }

  // The mapping editor: the parameters a row's transform takes, named under its box.
  document.addEventListener("change", function (event) {
    var match = (event.target.id || "").match(/^(id_rows-\d+)-transform$/);
    var source = document.getElementById("transform-params");
    if (!match || !source) return;
    var help = document.querySelector('[data-params-help="' + match[1] + '-params"]');
    var known = JSON.parse(source.textContent)[event.target.value];
    if (help) help.textContent = known ? "Known parameters: " + known : "This transform takes no parameters of its own.";
  });

  document.addEventListener("DOMContentLoaded", drawCharts);
  document.addEventListener("DOMContentLoaded", function () { labelCells(document); });
  document.addEventListener("htmx:afterSettle", function (event) { labelCells(event.target); });
})();
