/**
 * A documents API client for tests that checks every response against the served OpenAPI
 * document: the status must be documented for the operation, the media type must be one the
 * operation lists, the body must validate (ajv, JSON Schema 2020-12) and documented headers that
 * are present must validate. It also records which operations the suite has exercised.
 */
import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormatsModule from 'ajv-formats';
import type { TestServer } from './server.ts';

// ajv-formats is CommonJS; its default export arrives wrapped under ESM.
const addFormats = ((addFormatsModule as unknown as { default?: typeof addFormatsModule }).default ?? addFormatsModule) as unknown as (ajv: Ajv2020) => Ajv2020;

type Json = Record<string, unknown>;

export interface ApiResponse<T = any> {
  status: number;
  headers: Headers;
  body: T;
  /** The raw bytes (for file downloads). */
  bytes: Buffer;
}

export interface RequestOptions {
  token?: string;
  json?: unknown;
  body?: RequestInit["body"];
  headers?: Record<string, string>;
}

const pointer = (...parts: string[]) => `#/${parts.map((p) => p.replace(/~/g, '~0').replace(/\//g, '~1')).join('/')}`;

export class ApiClient {
  readonly spec: Json;
  readonly base: string;
  private readonly ajv: Ajv2020;
  private readonly templates: { template: string; regex: RegExp }[];
  readonly exercised = new Set<string>();

  private constructor(server: TestServer, spec: Json) {
    this.spec = spec;
    this.base = `${server.issuer}/api/v1`;
    this.ajv = new Ajv2020({ strict: false, allErrors: true });
    addFormats(this.ajv);
    this.ajv.addSchema(spec, 'openapi');
    this.templates = Object.keys(spec.paths as Json).map((template) => ({
      template,
      regex: new RegExp(`^${template.replace(/\{[^}]+\}/g, '[^/]+')}$`),
    }));
  }

  static async connect(server: TestServer): Promise<ApiClient> {
    const response = await fetch(`${server.issuer}/api/openapi.json`);
    if (response.status !== 200) throw new Error(`openapi.json answered ${response.status}`);
    return new ApiClient(server, await response.json() as Json);
  }

  /** Every operation in the document as "METHOD /template". */
  operations(): string[] {
    return Object.entries(this.spec.paths as Record<string, Json>).flatMap(([template, item]) =>
      Object.keys(item).filter((k) => ['get', 'post', 'put', 'patch', 'delete'].includes(k)).map((m) => `${m.toUpperCase()} ${template}`));
  }

  private resolve(value: Json): Json {
    let current = value;
    while (typeof current.$ref === 'string') {
      current = (current.$ref as string).slice(2).split('/')
        .reduce<any>((node, part) => node[part.replace(/~1/g, '/').replace(/~0/g, '~')], this.spec);
    }
    return current;
  }

  private check(method: string, path: string, response: ApiResponse, contentType: string): void {
    const route = this.templates.find((t) => t.regex.test(path));
    if (!route) throw new Error(`${method} ${path}: the path is not in the OpenAPI document`);
    const operation = (this.spec.paths as Record<string, Record<string, Json>>)[route.template]![method.toLowerCase()];
    if (!operation) throw new Error(`${method} ${route.template}: the operation is not in the OpenAPI document`);
    this.exercised.add(`${method} ${route.template}`);
    const documented = (operation.responses as Record<string, Json>)[String(response.status)];
    if (!documented) {
      throw new Error(`${method} ${route.template}: status ${response.status} is not documented\n${response.bytes.toString().slice(0, 300)}`);
    }
    const definition = this.resolve(documented);
    const responsePointer = typeof documented.$ref === 'string'
      ? documented.$ref as string
      : pointer('paths', route.template, method.toLowerCase(), 'responses', String(response.status));

    for (const name of Object.keys((definition.headers ?? {}) as Json)) {
      const value = response.headers.get(name);
      if (value === null) continue;
      const validate = this.ajv.compile({ $ref: `openapi${responsePointer}/headers/${name}/schema` });
      if (!validate(value)) throw new Error(`${method} ${route.template} ${response.status}: header ${name}="${value}" ${this.ajv.errorsText(validate.errors)}`);
    }

    const content = definition.content as Record<string, Json> | undefined;
    if (!content) {
      if (response.bytes.length !== 0) throw new Error(`${method} ${route.template} ${response.status}: documented without a body, got one`);
      return;
    }
    const mediaType = contentType.split(';')[0]!.trim();
    if (!content[mediaType]) {
      throw new Error(`${method} ${route.template} ${response.status}: media type "${mediaType}" is not documented (${Object.keys(content).join(', ')})`);
    }
    if (!mediaType.includes('json')) return;
    const validate = this.ajv.compile({ $ref: `openapi${responsePointer}/content/${mediaType.replace(/\//g, '~1')}/schema` });
    if (!validate(response.body)) {
      throw new Error(`${method} ${route.template} ${response.status}: body does not match the OpenAPI schema: ${this.ajv.errorsText(validate.errors)}\n${JSON.stringify(response.body).slice(0, 500)}`);
    }
  }

  /** Sends a request to /api/v1<path> and validates the answer against the document. */
  async request<T = any>(method: string, path: string, options: RequestOptions = {}): Promise<ApiResponse<T>> {
    const headers = new Headers(options.headers);
    if (options.token !== undefined) headers.set('authorization', `Bearer ${options.token}`);
    let body = options.body;
    if (options.json !== undefined) {
      body = JSON.stringify(options.json);
      if (!headers.has('content-type')) headers.set('content-type', 'application/json');
    }
    const response = await fetch(`${this.base}${path}`, { method, headers, body: body ?? null });
    const bytes = Buffer.from(await response.arrayBuffer());
    const contentType = response.headers.get('content-type') ?? '';
    const parsed = contentType.includes('json') && bytes.length ? JSON.parse(bytes.toString('utf8')) : undefined;
    const result: ApiResponse<T> = { status: response.status, headers: response.headers, body: parsed as T, bytes };
    this.check(method, path.split('?')[0]!, result, contentType);
    return result;
  }
}
